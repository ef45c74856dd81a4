"""One training job from a composed config: what ``train.py`` runs for each (multi)run job.

The order matters: everything that can be checked from the config alone (model settings,
trainer settings, disk space, the resume checkpoint) is checked before data is touched, so a typo
fails in a second instead of after an hour of preprocessing.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from callbacks.last_checkpoint import LastCheckpoint
from darkraw.cli import override_key
from darkraw.csv_logger import ResumableCSVLogger
from darkraw.disk import GB, ensure_free_space
from darkraw.distributed import (
    adapt_strategy,
    check_multi_node_launch,
    distributed_callbacks,
    env_global_rank,
    release_ranks,
    requeue_checkpoints,
    resume_checkpoint,
)
from darkraw.errors import ConfigError
from darkraw.health import raise_if_unhealthy
from darkraw.instantiate import check_argument_types, check_values, instantiate_checked
from darkraw.logging_steps import off_the_logging_steps
from darkraw.plots import plot_learning_curve, read_metrics
from darkraw.preflight import check_preflight_options, global_rank_from_env, run_preflight
from darkraw.resume import (
    check_resume_checkpoint,
    check_resume_settings,
    same_run_with_other_max_steps,
)
from darkraw.slurm_requeue import SlurmRequeue, slurm_environment_plugins
from darkraw.stop_sync import synchronised_stop
from darkraw.suggest import did_you_mean
from datamodules.raw import CROP_MULTIPLE
from lightning_modules.config import LossConfig, NetConfig, build
from lightning_modules.losses import ms_ssim_min_side
from lightning_modules.module import RestorationModule
from sweeps.job_status import StoppedInTraining, Terminated

log = logging.getLogger(__name__)

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
#: Set only by conf/callbacks/default.yaml: the callbacks group holds every default callback.
CALLBACKS_COMPLETE = "_darkraw_callbacks_complete"


@dataclass
class RunSummary:
    """What a finished job reports: printed for people, returned for sweepers and tests."""

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    metrics_csv: Path | None = None
    learning_curve: Path | None = None
    wandb_dir: Path | None = None
    global_step: int = 0
    wall_seconds: float = 0.0
    #: Optimiser steps done at the last validation, where this launch ran none (its figures
    #: come from the run's metrics CSV: a relaunch of a finished run validates nothing).
    earlier_validation_step: int | None = None


def check_trainer_config(trainer_cfg: Mapping[str, Any], on_this_machine: bool = True) -> None:
    """``on_this_machine=False``: not whether this machine has the accelerator (a SLURM sweep is
    launched from a login node without GPUs)."""
    precision = str(trainer_cfg.get("precision", "32"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not allowed: choose one of {list(PRECISIONS)}"
        )
    max_steps = trainer_cfg.get("max_steps", -1)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(
            f"trainer.max_steps={max_steps!r} is not allowed: training is counted in iterations; "
            "give a positive number of optimiser steps (the paper: 1000000)"
        )
    interval = trainer_cfg.get("val_check_interval")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        # Lightning reads a float as a fraction of an epoch, which a stream of steps has not.
        raise ConfigError(f"trainer.val_check_interval={interval!r} must be a positive whole "
                          "number of optimiser steps between validations, e.g. 5000")
    accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate!r} is not supported: data.batch_size "
            "is the batch of one optimiser step (the learning rate, trainer.max_steps, the "
            "milestones and the resumable patch stream count such steps); raise data.batch_size "
            "instead (with trainer=ddp each device loads batch_size / devices of it)"
        )
    devices = trainer_cfg.get("devices", "auto")
    if devices == 0 or isinstance(devices, bool):
        raise ConfigError(f"trainer.devices={devices!r} is not allowed: give how many devices "
                          "to use (1, 2, ...; -1 for all), a list of GPU ids, or auto")
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator.lower() not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not supported: choose one of "
                          f"{list(ACCELERATORS)}")
    if on_this_machine:
        check_accelerator_available(accelerator)
    if trainer_cfg.get("max_epochs") not in (-1, None):
        log.warning("trainer.max_epochs=%s may end the run before trainer.max_steps=%s",
                    trainer_cfg.get("max_epochs"), max_steps)
    warn_about_validation_schedule(max_steps, interval, trainer_cfg.get("limit_val_batches", 1.0))


def warn_about_validation_schedule(max_steps: int, interval: int, limit_val_batches: object
                                   ) -> None:
    """A run that never validates has no val metrics, best checkpoint or validation alarms:
    it can fail to learn with nothing to flag it. And a run ending between validations
    reports (and keeps as best) weights from before its last steps."""
    if limit_val_batches in (0, 0.0) or interval > max_steps:
        why = ("trainer.limit_val_batches=0" if limit_val_batches in (0, 0.0) else
               f"trainer.val_check_interval={interval} > trainer.max_steps={max_steps}")
        log.warning("this run never validates (%s): no validation metrics, "
                    "no best checkpoint, and the learning-health alarms cannot judge "
                    "validation; a run that does not learn goes unflagged", why)
    elif max_steps % interval:
        last = max_steps - max_steps % interval
        log.warning("the last validation is at step %d, %d steps before the "
                    "end (trainer.max_steps=%d is not a multiple of trainer.val_check_interval="
                    "%d): the final weights (last.ckpt) are not validated", last,
                    max_steps - last, max_steps, interval)


#: ``trainer.accelerator`` values darkraw runs on (Lightning's others need packages or
#: hardware it does not support: tpu, hpu, ...).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_seed(seed: object) -> int:
    """Lightning's own check ends in ``int('abc')``'s traceback; say which key to fix."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} must be a whole number in [0, 2**32), e.g. seed=1")
    return seed


def check_accelerator_available(accelerator: str) -> None:
    """Lightning's own error for a missing GPU ("No supported gpu backend found!") names neither
    the setting nor the way out; `experiment=paper` asks for a GPU, laptops have none."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    wanted = {"gpu": cuda or mps, "cuda": cuda, "mps": mps}
    if not wanted.get(accelerator.lower(), True):
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is not available: PyTorch sees no "
            f"{'CUDA or MPS' if accelerator.lower() == 'gpu' else accelerator.upper()} device on "
            "this machine. Train on the CPU with trainer.accelerator=cpu (or trainer=cpu), or "
            "check CUDA_VISIBLE_DEVICES and that torch is a CUDA build "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda})"
        )


def check_patch_size(patch_size: object, win_size: int, min_side: int) -> None:
    """At start, before the model is built: the model's summary image defaults to one training
    patch, and its own check would blame ``model.summary_image_size`` for a bad
    ``data.patch_size``. The crop side must be a multiple of 32 (the network downsamples by 32)
    and, for MS-SSIM's five scales, larger than ``min_side`` (160 px with an 11-px window);
    otherwise the loss fails at the first training step (or in the pre-flight check)."""
    if not isinstance(patch_size, int) or isinstance(patch_size, bool):
        return  # the data group's type check names it
    smallest = (min_side // CROP_MULTIPLE + 1) * CROP_MULTIPLE
    if patch_size % CROP_MULTIPLE or patch_size < CROP_MULTIPLE:
        raise ConfigError(
            f"data.patch_size={patch_size} must be a multiple of {CROP_MULTIPLE} (full-resolution "
            f"pixels; the network downsamples by {CROP_MULTIPLE}) and larger than {min_side} px "
            f"for the loss (loss.win_size={win_size}): e.g. {smallest}, {smallest + 64} or 512 "
            "(the paper)"
        )
    if patch_size <= min_side:
        raise ConfigError(
            f"data.patch_size={patch_size} is too small for the loss: MS-SSIM over 5 scales with "
            f"loss.win_size={win_size} needs crops larger than {min_side} px; use a multiple of "
            f"32 from {smallest} (the paper: 512), or a smaller loss.win_size"
        )


def check_local_config(cfg: DictConfig) -> None:
    """conf/local/default.yaml without ``# @package _global_`` lands under ``local.``, where
    nothing reads it: the machine's paths would be ignored without a word."""
    local = cfg.get("local")
    if local:
        keys = sorted(str(k) for k in local)
        raise ConfigError(
            f"conf/local/default.yaml must start with the line '# @package _global_': without "
            f"it its settings ({', '.join(keys)}) land under 'local.' and are ignored"
        )


def check_types(cfg: DictConfig) -> None:
    """Wrong-type settings (``data.batch_size=abc``) in one line instead of the traceback of a
    comparison deep inside the target; the types are those of the targets' signatures."""
    check_argument_types(cfg.trainer)
    check_argument_types(cfg.data)
    # The model group is not instantiated from its node: its keys are RestorationModule's.
    check_model_keys(cfg.model)
    check_values(RestorationModule, cfg.model, prefix="model")


#: RestorationModule's parameters that take whole config groups, not keys of the model group.
_GROUP_PARAMETERS = ("net", "loss", "optimizer", "scheduler")


def model_group_keys() -> tuple[set[str], set[str]]:
    """(the network's keys, the module's own) that the model group may hold, read from the
    network settings and RestorationModule's signature, so neither list is kept twice."""
    net_keys = {f.name for f in fields(NetConfig)}
    parameters = inspect.signature(RestorationModule.__init__).parameters
    own = {name for name in parameters if name not in ("self", *_GROUP_PARAMETERS)}
    return net_keys, own


def check_model_keys(model_cfg: Mapping[str, Any]) -> None:
    """``+model.rbd=after`` would otherwise train the default variant without a word."""
    net_keys, own = model_group_keys()
    allowed = sorted(net_keys | own)
    for key in model_cfg:
        if str(key) in allowed:
            continue
        hint = did_you_mean(key, allowed, "model.") or f"the model group takes {allowed}"
        raise ConfigError(f"model.{key} is not a setting of the model: {hint} (remove the key, "
                          "or correct its name)")


def device_count(trainer_cfg: Mapping[str, Any]) -> int | None:
    """Processes per node that ``trainer.devices`` asks for, as Lightning counts them; None
    where that depends on what Lightning finds (an unknown accelerator)."""
    devices = trainer_cfg.get("devices", "auto")
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            devices = int(text)
        elif text != "auto":
            # "0,1" or "0," lists GPU indices, as Lightning parses them.
            return len([part for part in text.split(",") if part.strip()]) or None
    if isinstance(devices, list | tuple) or OmegaConf.is_list(devices):
        return len(devices) or None
    if isinstance(devices, bool) or not (isinstance(devices, int) or devices == "auto"):
        return None
    gpus = torch.cuda.device_count() or int(torch.backends.mps.is_available())
    if accelerator == "auto":
        accelerator = "gpu" if gpus else "cpu"
    if accelerator == "cpu":
        # Lightning's CPU accelerator: 'auto' is one process, -1 one per core.
        return 1 if devices == "auto" else (os.cpu_count() or 1) if devices == -1 else devices
    if accelerator in ("gpu", "cuda", "mps"):
        return gpus if devices in ("auto", -1) else devices
    return devices if isinstance(devices, int) and devices > 0 else None


def check_batch_divides(data_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> None:
    """The datamodule checks this in ``setup``: after the pre-flight check (on SID, the cache
    build) and after Lightning started the other ranks. The world size is known from the config
    already, so check it at start, in the datamodule's words."""
    batch = data_cfg.get("batch_size")
    devices, nodes = device_count(trainer_cfg), trainer_cfg.get("num_nodes", 1)
    if (not isinstance(batch, int) or batch < 1 or devices is None or devices < 1
            or not isinstance(nodes, int) or nodes < 1):
        return
    world = devices * nodes
    if batch % world:
        raise ConfigError(
            f"data.batch_size={batch} is the global batch and must divide evenly over {world} "
            f"devices; use a multiple of {world}"
        )


def check_callbacks_group(cfg: DictConfig) -> None:
    """Refuse ``callbacks=<one file>``: it replaces the whole group, so checkpointing, resume
    and the health alarms would silently be gone. Only ``conf/callbacks/default.yaml`` (or a
    file made to replace it) sets :data:`CALLBACKS_COMPLETE`."""
    callbacks = cfg.get("callbacks")
    if callbacks is None:  # `~callbacks` (or `callbacks: null` in a defaults list)
        log.warning("no callbacks at all (~callbacks): no last.ckpt (a stopped or killed run "
                    "cannot resume), no best checkpoint, no NaN guard and no learning-health "
                    "alarms; to leave out one of them use callbacks.<name>=null instead")
        return
    if callbacks.get(CALLBACKS_COMPLETE):
        return
    chosen = ", ".join(callbacks.keys()) or "?"
    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices.get("callbacks") or chosen
    defaults = callback_files(exclude=str(chosen))
    listed = f" ({', '.join(defaults)})" if defaults else ""
    raise ConfigError(
        f"callbacks={chosen} replaces all default callbacks{listed}: to change "
        "one, override it instead (callbacks.image_panel=null to drop one, "
        "callbacks.lr_monitor.logging_interval=epoch to change a setting). A file meant to "
        f"replace the whole group sets {CALLBACKS_COMPLETE}: true, as conf/callbacks/default.yaml"
        " does"
    )


def callback_files(exclude: str) -> list[str]:
    """The callbacks group's options other than ``default`` (one per callback), as Hydra sees
    them: the config folder is the one source of their names."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return []
    options = GlobalHydra.instance().config_loader().get_group_options("callbacks")
    return [name for name in options if name not in ("default", exclude)]


def check_train_metrics_interval(model_cfg: Mapping[str, Any],
                                 trainer_cfg: Mapping[str, Any]) -> None:
    every = model_cfg.get("train_metrics_every_n_steps", 50)
    log_every = trainer_cfg.get("log_every_n_steps", 50)
    # Checked first: the model's interval follows it by default, and would take the blame.
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(f"trainer.log_every_n_steps={log_every!r} must be a positive step "
                          "count (Lightning writes step metrics every this many steps)")
    if not isinstance(every, int) or every < 1 or every % log_every:
        raise off_the_logging_steps(
            "model.train_metrics_every_n_steps", every, log_every,
            ". Lightning writes step metrics only every log_every_n_steps steps and drops train "
            "PSNR/SSIM computed on other steps")


def build_module(cfg: DictConfig) -> RestorationModule:
    model = cfg.model
    net_keys, _ = model_group_keys()
    return RestorationModule(
        net={key: model[key] for key in net_keys if key in model},
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        train_metrics_every_n_steps=model.get("train_metrics_every_n_steps", 50),
        compile=model.get("compile", False),
        summary_image_size=model.get("summary_image_size"),
    )


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null ``{name: {_target_: ...}}`` entry of a config group."""
    if not group:
        return []
    return [instantiate_checked(node) for name, node in group.items()
            if not str(name).startswith("_") and node and "_target_" in node]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def job_log_name() -> str | None:
    """The name of the log file Hydra writes into the job folder (``<job name>.log``), if any."""
    if not HydraConfig.initialized():
        return None
    filename = OmegaConf.select(HydraConfig.get(), "job_logging.handlers.file.filename")
    output_dir = HydraConfig.get().runtime.output_dir
    if not filename or Path(str(filename)).parent != Path(str(output_dir)):
        return None
    return Path(str(filename)).name


WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(output_dir: Path, fresh: bool) -> str:
    """A new W&B id for a fresh run, kept in its folder so a resumed job continues that run."""
    id_file = output_dir / WANDB_ID_FILE
    if not fresh and id_file.is_file():
        return id_file.read_text().strip()
    run_id = hashlib.sha1(f"{output_dir.resolve()}@{time.time_ns()}".encode()).hexdigest()[:16]
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig, output_dir: Path, fresh: bool) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node or "_target_" not in node:
            continue
        if name == "wandb":
            loggers.append(build_wandb_logger(cfg, node, output_dir, fresh))
        else:
            logger = instantiate_checked(node)
            if isinstance(logger, ResumableCSVLogger):
                logger.append = not fresh  # a resumed run continues its metrics.csv
            loggers.append(logger)
    return loggers


#: W&B refuses to start a run with a tag longer than this (wandb 0.31 raises at init).
WANDB_TAG_MAX = 64


def wandb_tags(name: str, configured: list[str], overrides: list[str]) -> list[str]:
    """The experiment name and the job's overrides (a sweep's values), as W&B tags.

    Overrides whose key is excluded from folder names (paths, data roots: noise, and often longer
    than W&B's 64 characters, which would make ``wandb.init`` fail the job) are left out; any
    other tag that is still too long is shortened.
    """
    excluded: set[str] = set()
    if HydraConfig.initialized():
        excluded = set(HydraConfig.get().job.config.override_dirname.exclude_keys or [])
    kept = [o for o in overrides if override_key(o) not in excluded]
    tags = {str(t) for t in (*configured, name, *kept) if str(t)}
    return sorted(t if len(t) <= WANDB_TAG_MAX else t[: WANDB_TAG_MAX - 3] + "..." for t in tags)


def build_wandb_logger(cfg: DictConfig, node: DictConfig, output_dir: Path,
                       fresh: bool) -> WandbLogger:
    overrides = job_overrides()
    run_name = output_dir.name if output_dir.name != "default" else cfg.name
    group = node.get("group")
    if not group:
        # One W&B group per sweep (its folder is unique), the experiment name for single runs.
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        group = (f"{cfg.name}@{sweep_dir.parent.name}_{sweep_dir.name}"  # date_time
                 if is_multirun() else cfg.name)
    tags = wandb_tags(cfg.name, node.get("tags", []), overrides)
    extra = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
             if k not in ("group", "tags", "name")}
    extra["name"] = node.get("name") or f"{cfg.name}/{run_name}"
    logger = instantiate_checked(
        {**extra, "group": group, "tags": tags, "id": wandb_run_id(output_dir, fresh),
         "resume": "allow"}
    )
    # Lightning always hands wandb.init anonymous=None, and wandb 0.2x+ then warns on every run
    # that "the anonymous setting has no effect": leave the unset setting out.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]
    return logger


def log_resolved_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """The whole resolved config, nested, so W&B can group runs by e.g. ``model.rdb``."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)  # type: ignore[arg-type]


def run_identity_exclusions() -> list[str]:
    """The config keys that do not name a run's folder (``exclude_keys`` in conf/hydra), so they
    may change between the launches of one run: paths, loader workers, progress bars, loggers."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().job.config.override_dirname.exclude_keys or [])


def hint_at_the_run_to_train_longer(output_dir: Path) -> None:
    """A new run that differs from a checkpointed one only in ``trainer.max_steps`` was most
    likely meant to continue it: say how, before hours are spent starting over."""
    if env_global_rank() != 0:
        return
    for folder, steps in same_run_with_other_max_steps(output_dir, job_overrides(),
                                                       run_identity_exclusions()):
        log.warning(
            "%s holds a run with the same settings but trainer.max_steps=%s, with a "
            "checkpoint; this command starts a new run from scratch in %s. To train that run "
            "longer instead, stop this one and add hydra.run.dir=%s (it resumes at its last "
            "step and trains on to the new trainer.max_steps)", folder,
            steps if steps is not None else "the config's", output_dir, folder)


def checkpoint_dir(cfg: DictConfig, output_dir: Path) -> Path:
    """Where last.ckpt lives: callbacks/last_checkpoint.py writes it (resume reads it)."""
    callbacks = cfg.get("callbacks") or {}
    for name in ("last_checkpoint", "model_checkpoint"):
        node = callbacks.get(name)
        if node and node.get("dirpath"):
            return Path(node.dirpath)
    return output_dir / "checkpoints"


def build_plugins(cfg: DictConfig) -> list[Any]:
    """The trainer's own plugins plus the atomic, space-checked CheckpointIO (conf: checkpoint_io).

    Every checkpoint (last.ckpt, best, SIGTERM saves) goes through it: darkraw/checkpoint_io.py.
    Under SLURM, Lightning's own requeue is off: darkraw/slurm_requeue.py requeues instead.
    """
    configured = cfg.trainer.get("plugins")
    plugins = list(instantiate(configured)) if configured else []
    plugins += slurm_environment_plugins(plugins)
    node = cfg.get("checkpoint_io")
    if node and "_target_" in node:
        plugins.append(instantiate_checked(node))
    return plugins


def sigterm_exit(trainer: L.Trainer, ckpt_dir: Path,
                 resume_mode: object = "auto") -> StoppedInTraining:
    """SIGTERM'd (or Ctrl-C'd) fit: say where it stopped and how to resume; exit 143 (128 +
    SIGTERM), or 130 (128 + SIGINT).

    Lightning 2.6.6 turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with no code: the
    process would exit 0, as if training had finished. Under ``-m`` this ends the whole sweep,
    as a terminated process should; each finished or saved job resumes on relaunch.
    """
    last_callbacks = [cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)]
    saved = [cb.saved_step for cb in last_callbacks if cb.saved_step is not None]
    # A first Ctrl-C takes the same path (callbacks/last_checkpoint.py); it exits 130. Under DDP
    # rank 0 knows every rank's reason from the agreed stop (darkraw/stop_sync.py).
    sync = synchronised_stop(trainer)
    ctrl_c = any(cb.ctrl_c_step is not None for cb in last_callbacks) or (
        sync is not None and "Ctrl-C" in sync.reasons())
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        where = f"no {last} to resume from: a relaunch starts over"
    else:
        where = f"resume point {last}" + (f" at step {saved[0]}" if saved else "")
    requeued = any(cb.requeue_at_exit(trainer) for cb in trainer.callbacks
                   if isinstance(cb, SlurmRequeue))
    if requeued:
        how = "The SLURM job is requeued as this process exits and resumes there"
    elif str(resume_mode).lower() == "false":
        # The same command would start over (a SLURM requeue of it does resume).
        how = "Relaunch it without resume=false to resume (resume=false starts over again)"
    else:
        how = "Relaunch the same command to resume (resume=auto)"
    if is_multirun() and not requeued:
        # The same -m command makes a new timestamped sweep folder and starts every job over.
        sweep_dir = Path(HydraConfig.get().sweep.dir).resolve()
        how += (f", adding hydra.sweep.dir={sweep_dir} so that it continues this sweep (its "
                "finished jobs end at once)")
    cause = "Ctrl-C" if ctrl_c else "SLURM's time-limit signal" if requeued else "SIGTERM"
    message = f"stopped by {cause} at step {trainer.global_step}; {where}. {how}."
    if trainer.is_global_zero:
        print(f"darkraw: {message}", file=sys.stderr, flush=True)
    return StoppedInTraining(130 if ctrl_c else 143, message, trainer.global_step,
                             str(last) if last.is_file() else None)


def finish_wandb() -> None:
    """Close the W&B run, or the next multirun job in this process would log into it."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


def summarise(trainer: L.Trainer, output_dir: Path, loggers: list[Logger],
              started: float, fit_metrics: Mapping[str, float] | None = None) -> RunSummary:
    summary = RunSummary(output_dir=output_dir, global_step=trainer.global_step,
                         wall_seconds=time.time() - started, metrics=dict(fit_metrics or {}))
    for key, value in trainer.callback_metrics.items():
        summary.metrics[key] = float(value)
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            # Two of them: best (model_checkpoint) and last (last_checkpoint); keep each one's.
            summary.best_checkpoint = callback.best_model_path or summary.best_checkpoint
            summary.last_checkpoint = callback.last_model_path or summary.last_checkpoint
            if callback.best_model_score is not None:
                summary.metrics[f"best/{callback.monitor}"] = float(callback.best_model_score)
    if not trainer.is_global_zero:
        # Under DDP the files and the W&B run belong to rank 0; elsewhere `logger.experiment` is
        # a dummy and a second plot would race rank 0's.
        return summary
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            csv_path = Path(logger.log_dir) / "metrics.csv"
            if csv_path.is_file():
                summary.metrics_csv = csv_path
                fill_in_last_validation(summary, csv_path)
                summary.learning_curve = plot_learning_curve(
                    csv_path, output_dir / "learning_curve.png", title=output_dir.name
                )
        if isinstance(logger, WandbLogger):
            summary.wandb_dir = Path(logger.experiment.dir).parent
    return summary


#: The validation figures the summary reports, read back from the CSV when this launch has none.
LAST_VALIDATION_KEYS = ("val/psnr", "val/ssim", "val/psnr_input")


def fill_in_last_validation(summary: RunSummary, metrics_csv: Path) -> None:
    """A relaunch that finds training finished validates nothing: report the run's last
    validation, from its metrics file, rather than a summary without any figure."""
    if LAST_VALIDATION_KEYS[0] in summary.metrics:
        return
    series, _ = read_metrics(metrics_csv)
    last = series.get(LAST_VALIDATION_KEYS[0])
    if not last:
        return
    step = last[-1][0]
    for key in LAST_VALIDATION_KEYS:
        value = dict(series.get(key, [])).get(step)
        if value is not None and key not in summary.metrics:
            summary.metrics[key] = value
    summary.earlier_validation_step = step + 1  # logged steps count from 0, as in compare


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``: a relaunch that only reports took "0.0 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def wandb_sync_command(segment: Path) -> str:
    """The command that uploads the whole run: every launch of a resumed run wrote its own
    ``offline-run-*`` folder (of one run id), and syncing only this launch's would upload the
    steps since the last resume alone."""
    folder = segment.parent
    if len(list(folder.glob("offline-run-*"))) > 1:
        return f"wandb sync {shlex.quote(str(folder))}/offline-run-*"
    return f"wandb sync {shlex.quote(str(segment))}"


def print_summary(summary: RunSummary, input_baseline_key: str = "val/psnr_input") -> None:
    """Where everything is, in full paths (people copy them), and whether the net beat its input."""
    rows: list[tuple[str, object]] = [
        ("output folder", summary.output_dir),
        ("best checkpoint", summary.best_checkpoint),
        ("last checkpoint", summary.last_checkpoint),
        ("metrics (CSV)", summary.metrics_csv),
        ("learning curve", summary.learning_curve),
        ("validation images", images if (images := summary.output_dir / "images").is_dir()
         and any(images.iterdir()) else None),
        ("W&B offline run", summary.wandb_dir),
    ]
    psnr = summary.metrics.get("val/psnr")
    baseline = summary.metrics.get(input_baseline_key)
    if psnr is not None:
        line = f"{psnr:.2f} dB"
        if baseline is not None:
            line += f" (amplified input: {baseline:.2f} dB, gain {psnr - baseline:+.2f} dB)"
        if summary.earlier_validation_step is not None:
            line += (f", validated after step {summary.earlier_validation_step} by an earlier "
                     "launch")
        rows.append(("last val PSNR", line))
    if "val/ssim" in summary.metrics:
        rows.append(("last val SSIM", f"{summary.metrics['val/ssim']:.4f}"))
    if "test/psnr" in summary.metrics:  # test_after_fit: the best checkpoint on the test split
        line = f"{summary.metrics['test/psnr']:.2f} dB"
        if "test/ssim" in summary.metrics:
            line += f", SSIM {summary.metrics['test/ssim']:.4f}"
        rows.append(("test (best ckpt)", line))
    if summary.wandb_dir:
        rows.append(("see it in W&B", wandb_sync_command(summary.wandb_dir)))
        rows.append(("browse offline", f"wandb leet {shlex.quote(str(summary.wandb_dir.parent))}"))
    width = max(len(label) for label, _ in rows)
    lines = [f"darkraw: run finished at step {summary.global_step} "
             f"(this launch: {duration(summary.wall_seconds)})"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows if value]
    print("\n".join(lines), file=sys.stderr, flush=True)


def quiet_library_noise() -> None:
    """Lightning warns when an epoch has fewer batches than ``trainer.log_every_n_steps``, as if
    step metrics would then go unlogged. They do not: it counts steps across epochs, so the
    quickstart (16 synthetic pairs, batch 4: 4 batches an epoch) logs every 10 steps as asked.
    darkraw logs by step only, so the warning can only mislead here."""
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging",
        category=PossibleUserWarning,
    )
    # A mid-epoch resume: Lightning cannot see that darkraw's patch stream resumes exactly (the
    # data module restarts it at the checkpoint's batch count, datamodules/patch_stream.py; the
    # resume tests compare the weights with an uninterrupted run's), and calls it unreliable.
    warnings.filterwarnings(
        "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended "
        "and your dataloader is not resumable", category=PossibleUserWarning,
    )
    # Lightning 2.6 uses an API that torch 2.13 deprecates, once per run; nothing for users to do.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def route_lightning_logs_through_hydra() -> None:
    """Print each Lightning message once, in Hydra's format and in the job's log file.

    The ``lightning`` package logger carries its own console handler ("INFO: ...") and also
    propagates to the root logger, where Hydra's handlers print the message a second time.
    Python warnings (darkraw's learning-health warnings, Lightning's) go the same way: to the
    console and into the job's ``train.log`` (on SLURM, the only record a warning would have
    otherwise is the job's stderr file).
    """
    if logging.getLogger().hasHandlers():
        logging.captureWarnings(True)
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler):
                package.removeHandler(handler)
    # Lightning's advertisement for its cloud services, at the start of every run.
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLightningTips())


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def check_config(cfg: DictConfig, on_this_machine: bool = True) -> int:
    """The start-up checks that need the config alone (no data or run folder); the seed. A
    sweep runs them on every job before the first starts (:mod:`darkraw.sweep_check`), with
    ``on_this_machine=False``: its jobs may run elsewhere.
    """
    check_local_config(cfg)
    check_callbacks_group(cfg)
    check_trainer_config(cfg.trainer, on_this_machine)
    # Before the groups that interpolate it (data.seed: ${seed}), so the message names `seed`.
    seed = check_seed(cfg.seed)
    check_types(cfg)
    check_train_metrics_interval(cfg.model, cfg.trainer)
    check_batch_divides(cfg.data, cfg.trainer)
    # Here, not when the check runs: on SID that is after the cache build, which takes hours.
    check_preflight_options(cfg.get("preflight"))
    # Before the model: its summary image defaults to one patch, and its check would blame that.
    loss_cfg: LossConfig = build(LossConfig, OmegaConf.to_container(cfg.loss, resolve=True),
                                 "loss")
    check_patch_size(cfg.data.get("patch_size"), loss_cfg.win_size,
                     ms_ssim_min_side(loss_cfg.win_size))
    return seed


def train(cfg: DictConfig, on_accepted: Callable[[], None] | None = None) -> RunSummary:
    """``on_accepted`` is called once every start-up check has passed, before any data is
    touched: a :class:`~darkraw.errors.ConfigError` raised before it refused the launch."""
    started = time.time()
    quiet_library_noise()
    route_lightning_logs_through_hydra()
    output_dir = Path(cfg.paths.output_dir)
    seed = check_config(cfg)
    check_multi_node_launch(cfg.trainer.get("num_nodes", 1))
    strategy_note = adapt_strategy(cfg.trainer)
    if strategy_note:
        log.info(strategy_note)
    # Before the module is built: `seed` fixes the initial weights, not only crops and flips.
    # Said once the launch is accepted (below): a config error would come after the line.
    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(cfg)
    # Before resume_checkpoint: resume=false sets the previous run aside, which a bad data
    # setting (data.num_workers=-1) must not get to do.
    datamodule = instantiate_checked(cfg.data, _convert_="all")
    ckpt_dir = checkpoint_dir(cfg, output_dir)
    requeue_dir = Path(cfg.trainer.get("default_root_dir") or output_dir)
    ckpt_path = resume_checkpoint(cfg.get("resume", "auto"), ckpt_dir, requeue_dir,
                                  run_dir=output_dir)
    # Lightning would end in torch's traceback on a damaged file; say which and what to do.
    resumed = check_resume_checkpoint(ckpt_path, [*sorted(ckpt_dir.glob("*.ckpt")),
                                                  *requeue_checkpoints(requeue_dir)])
    min_free_gb = cfg.get("min_free_disk_gb", 1.0)
    ensure_free_space(output_dir, min_free_gb * GB, "checkpoints, metrics and images",
                      margin_setting=f"min_free_disk_gb={min_free_gb}")
    if ckpt_path is None and HydraConfig.initialized() and not is_multirun():
        hint_at_the_run_to_train_longer(output_dir)

    # Before anything is trained or logged: a resume under other settings is refused by name.
    check_resume_settings(ckpt_path, resumed, module.hparams,
                          getattr(datamodule, "hparams", None), run_identity_exclusions())
    del resumed  # the optimizer state is Lightning's to load, from the file
    if on_accepted is not None:
        on_accepted()
    log.info("Seed set to %d (initial weights, training patches and flips)", seed)
    if global_rank_from_env() == 0:
        # The data is made ready (generated, cached, opened) before any logger exists: a listed
        # file that is missing, a damaged cache or a patch larger than the images then fails
        # the job before W&B starts a run for it (an empty run in the sweep's group otherwise,
        # with the pre-flight check off or on resume). Lightning's own calls find it ready.
        datamodule.prepare_data()
        datamodule.setup("fit")
    callbacks: list[Callback] = instantiate_named(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        # `trainer.enable_progress_bar=false` is how users (and CI logs) ask for plain output.
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    callbacks += distributed_callbacks(output_dir)
    loggers = build_loggers(cfg, output_dir, fresh=ckpt_path is None)
    if not loggers:
        # logger=none: the lr is still in every checkpoint; Lightning refuses the monitor.
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer: L.Trainer = instantiate_checked(
        cfg.trainer, callbacks=callbacks, logger=loggers or False,
        plugins=build_plugins(cfg) or None,
    )
    if ckpt_path is None:
        # Seconds of checks before hours of training; a resumed run passed them already.
        run_preflight(module, datamodule, cfg.get("preflight"), trainer.strategy.root_device)
    trained_step: int | None = None  # set once fit has finished: a SIGTERM after it says so
    try:
        failed = True
        try:
            log_resolved_config(loggers, cfg)
            if ckpt_path:
                log.info("Resuming from %s", ckpt_path)
                # Lightning warns that the folder is not empty: it holds the checkpoint this
                # run continues from, as it should.
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and "
                                        "is not empty")
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            except SIGTERMException as stop:
                raise sigterm_exit(trainer, ckpt_dir, cfg.get("resume", "auto")) from stop
            raise_if_unhealthy(trainer)  # a health callback stopped it: exit 1, with the reason
            trained_step = trainer.global_step
            # trainer.test replaces callback_metrics: keep the last validation's figures.
            fit_metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
            if cfg.get("test_after_fit"):
                try:
                    trainer.test(module, datamodule=datamodule, ckpt_path="best")
                except SIGTERMException as stop:
                    # Lightning's SystemExit without a code: the process would exit 0, and a
                    # SLURM time limit in the test phase would look like a finished job.
                    raise Terminated(trained_step) from stop
            summary = summarise(trainer, output_dir, loggers, started, fit_metrics)
            failed = False
        finally:
            finish_wandb()
            # DDP: wait for the other ranks and free the process group before the next job.
            release_ranks(trainer, failed)
        if trainer.is_global_zero:
            print_summary(summary)
    except Terminated as stop:  # after fit, SIGTERM is JobStatus's again (train.py reports it)
        stop.trained_step = trained_step
        raise
    return summary


def optimized_value(summary: RunSummary, metric: str) -> float:
    """The number a Hydra sweeper optimises: the best value if a checkpoint tracked it."""
    value = summary.metrics.get(f"best/{metric}", summary.metrics.get(metric))
    return float(value) if value is not None else math.nan

"""Multi-process (DDP) training under Hydra: how ranks start, who they are, and SLURM requeues.

How a DDP job gets its processes:

- **Started outside** (a SLURM job with one task per GPU, ``torchrun``): the ranks exist already
  and each one ran Hydra itself; Lightning only joins them (``creates_processes_externally``).
- **Started by Lightning** (one machine): Lightning's popen launcher re-runs ``sys.argv`` for each
  extra rank, adding ``hydra.run.dir=<this run's folder>``, ``hydra.output_subdir=null`` and
  ``hydra.job.name=train_ddp_process_<k>``
  (lightning/fabric/strategies/launchers/subprocess_script.py). Right for a single run, wrong in
  two places: under ``-m`` the re-run argv is the whole sweep (each extra rank re-runs every job),
  and inside a submitit job argv is submitit's own entry point. :class:`HydraDDPStrategy` re-runs
  *this job* instead: the entry script with this job's overrides, pinned to this job's folder.
  ``start_method=spawn`` (``ddp_spawn``) is no way out: it pickles the model, and the network's
  weight-normalised convolutions (``torch.nn.utils.parametrizations``) cannot be pickled.

Preemption: under SLURM, SIGUSR1 (``#SBATCH --signal=USR1@90``, conf/hydra/launcher/slurm.yaml)
stops training after the step, saves ``last.ckpt`` and requeues the job (darkraw/slurm_requeue.py).
Lightning's own requeue, off here, saved ``<default_root_dir>/hpc_ckpt_<n>.ckpt``; such a file (an
earlier version's) is still resumed from when it is the newest: Lightning loads it only when
``fit(ckpt_path=None)``, and darkraw passes ``last.ckpt`` explicitly, so
:func:`resume_checkpoint` picks whichever of the two is newer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler

from darkraw.errors import ConfigError
from darkraw.resume import resolve_resume
from datamodules.patch_stream import PatchStreamSampler

log = logging.getLogger(__name__)

#: Lightning's DDP strategy names whose extra ranks re-run sys.argv, and darkraw's replacement.
_ARGV_DDP_STRATEGIES = {"ddp": False, "ddp_find_unused_parameters_true": True}
HYDRA_DDP_TARGET = "darkraw.distributed.HydraDDPStrategy"
#: Environment variables Lightning's launcher sets in the launching process (restored per job).
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
#: Hydra overrides that only make sense for the sweep itself, not for one rank of one job.
_SWEEP_ONLY_PREFIXES = ("hydra.mode=", "hydra.sweep.", "hydra.launcher.", "hydra.sweeper.",
                        "hydra/launcher=", "hydra/sweeper=", "hydra.run.dir=",
                        "hydra.output_subdir=", "hydra.job.name=")
#: The file name pattern of Lightning's SLURM requeue checkpoints (``hpc_save_path``).
REQUEUE_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"
#: How long the launching rank waits for the other ranks to exit at the end of a job.
RANK_EXIT_TIMEOUT_S = 300.0


def external_launcher() -> str | None:
    """The name of whatever started this process as one rank of many, or None.

    Mirrors Lightning's cluster-environment detection, so darkraw decides the same way Lightning
    does whether ranks are started by Lightning or were started outside.
    """
    # Same order as Lightning's AcceleratorConnector._choose_and_init_cluster_environment.
    for name, environment in (("torchrun", TorchElasticEnvironment), ("SLURM", SLURMEnvironment),
                              ("LSF", LSFEnvironment), ("MPI", MPIEnvironment)):
        if environment.detect():
            return name
    if "LOCAL_RANK" in os.environ:
        # A rank that Lightning's launcher started (or a user-provided LOCAL_RANK).
        return "LOCAL_RANK"
    return None


#: Set on every node by a by-hand multi-node launch (Lightning's general cluster environment:
#: ``MASTER_ADDR=... NODE_RANK=<n> python train.py ...`` on each machine) or by Kubeflow.
_NODE_RANK_ENV = ("NODE_RANK", "GROUP_RANK", "RANK")


def check_multi_node_launch(num_nodes: object) -> None:
    """Refuse ``trainer.num_nodes > 1`` where nothing starts the other nodes' processes.

    Lightning then waits for them without a timeout of its own: the job sat at "Initializing
    distributed ... MEMBER: 1/2" for half an hour (torch's rendezvous timeout) and ignored
    Ctrl-C, and a local sweep job with it failed only after 1801 s.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes <= 1:
        return
    if external_launcher() is not None or any(name in os.environ for name in _NODE_RANK_ENV):
        return
    raise ConfigError(
        f"trainer.num_nodes={num_nodes} needs one process per node started on {num_nodes} "
        "machines, and nothing here starts them: this is not a SLURM task (srun), a torchrun "
        "or LSF/MPI rank, and NODE_RANK is not set, so training would wait for the other nodes "
        "forever. On one machine use trainer.num_nodes=1 with trainer.devices=N; on SLURM "
        "launch with hydra/launcher=slurm (or srun); by hand, start train.py on every node "
        "with MASTER_ADDR, MASTER_PORT and NODE_RANK set"
    )


def env_global_rank() -> int:
    """This process's global rank from the environment, before any process group exists."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def adapt_strategy(trainer_cfg: MutableMapping[str, Any]) -> str | None:
    """Replace Lightning's argv-re-running ``strategy=ddp`` by :class:`HydraDDPStrategy`.

    ``trainer.strategy=ddp`` on the command line would otherwise, in a multirun, re-run the whole
    sweep in every extra rank. Changes the config in place; returns a sentence saying so, or None.
    """
    strategy = trainer_cfg.get("strategy")
    if not isinstance(strategy, str) or strategy not in _ARGV_DDP_STRATEGIES:
        return None
    trainer_cfg["strategy"] = {"_target_": HYDRA_DDP_TARGET,
                               "find_unused_parameters": _ARGV_DDP_STRATEGIES[strategy]}
    return (f"trainer.strategy={strategy} runs as {HYDRA_DDP_TARGET}: its extra ranks re-run "
            "this job only, not the whole command line")


def _hydra_quote(value: str) -> str:
    """A value as a quoted Hydra override string (run folders contain ``=`` and ``,``)."""
    escaped = value.replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def entry_command(job_name: str) -> list[str]:
    """How to start the program that runs this Hydra job, for an extra rank.

    ``sys.argv[0]`` when it is the Hydra app (``python train.py``), ``-m <module>`` for
    ``python -m train``. Inside a submitit job argv is submitit's, and the app is the repository's
    ``<job name>.py`` (Hydra names jobs after their script), else its ``train.py``.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.rsplit(".", 1)[-1] == job_name:
        return [sys.executable, "-m", spec.name]
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is not None and script.stem == job_name and script.is_file():
        return [sys.executable, str(script)]
    repo = Path(__file__).resolve().parents[1]
    for fallback in (repo / f"{job_name}.py", repo / "train.py"):
        if fallback.is_file():
            return [sys.executable, str(fallback)]
    raise RuntimeError(
        f"cannot tell how to start the extra DDP ranks of Hydra job {job_name!r}: "
        f"{sys.argv[0]!r} is not its script and {repo / 'train.py'} does not exist"
    )


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command line and working directory of extra rank ``local_rank`` of this Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = entry_command(hydra_cfg.job.name)
    # What argv carried besides overrides: another primary config, an extra config folder.
    command += ["--config-name", str(hydra_cfg.job.config_name)]
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            command += ["--config-dir", str(source.path)]
    # As typed, unresolved: an override may hold an interpolation (e.g. ${hydra.job.num}).
    task = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    hydra_overrides = OmegaConf.to_container(hydra_cfg.overrides.hydra, resolve=False)
    command += [str(o) for o in task]  # type: ignore[union-attr]
    command += [str(o) for o in hydra_overrides  # type: ignore[union-attr]
                if not str(o).startswith(_SWEEP_ONLY_PREFIXES)]
    # hydra.mode=RUN: a named sweep (+sweep=rdb) sets MULTIRUN in its config, not on the command
    # line, so without it the rank would run as a sweep of its own, in a new timestamped folder
    # (where it finds no last.ckpt to resume from and waits for rank 0 forever).
    command += ["hydra.mode=RUN",
                f"hydra.run.dir={_hydra_quote(str(hydra_cfg.runtime.output_dir))}",
                "hydra.output_subdir=null",
                f"hydra.job.name={hydra_cfg.job.name}_ddp_process_{local_rank}"]
    return command, str(hydra_cfg.runtime.cwd)


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's popen launcher, but the extra ranks re-run this Hydra job, not ``sys.argv``.

    Also makes a process reusable for the next job of a sequential multirun: :meth:`finish`
    waits for (or, after a failure, stops) the ranks it started, destroys the process group and
    restores the environment variables the launch set (Lightning would otherwise take the next
    job's leftover ``LOCAL_RANK`` as "ranks started outside" and wait for ranks that never come).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saved_env: dict[str, str | None] | None = None

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            super()._call_children_scripts()
            return
        self._check_can_spawn_children()
        self.procs = []
        self._saved_env = {name: os.environ.get(name) for name in _LAUNCH_ENV}
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            env = os.environ.copy()
            env["LOCAL_RANK"] = str(local_rank)
            if os.environ.get("PL_GLOBAL_SEED") is None:
                env.pop("PL_GLOBAL_SEED", None)
            command, cwd = rank_command(local_rank)
            log.info("starting DDP rank %d: %s", local_rank, " ".join(command))
            self.procs.append(subprocess.Popen(command, env=env, cwd=cwd))

    def finish(self, failed: bool, timeout_s: float = RANK_EXIT_TIMEOUT_S) -> None:
        """End of the job in the launching process: reap the ranks, free the process group."""
        for proc in self.procs:
            if failed and proc.poll() is None:
                # The other ranks would wait in a collective for this one until the timeout.
                proc.send_signal(signal.SIGTERM)
            try:
                # After a failure, time to save a SIGTERM checkpoint (its barrier needs them all).
                proc.wait(timeout=min(30.0, timeout_s) if failed else timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("DDP rank process %d did not exit; killing it", proc.pid)
                proc.kill()
                proc.wait()
            if proc.returncode and not failed:
                log.warning("DDP rank process %d exited with code %d", proc.pid, proc.returncode)
        self.procs = []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if self._saved_env is not None:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = None


class HydraDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose Lightning-started ranks re-run this Hydra job (see the module doc).

    Ranks started outside (SLURM tasks, torchrun) are joined exactly as by ``DDPStrategy``.
    """

    def __init__(self, **kwargs: Any) -> None:
        start_method = kwargs.pop("start_method", "popen")
        if start_method != "popen":
            raise ValueError(f"{HYDRA_DDP_TARGET} starts ranks with popen only, not "
                             f"{start_method!r}: spawned ranks would need a picklable model")
        super().__init__(start_method="popen", **kwargs)

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = HydraJobLauncher(self.cluster_environment, self.num_processes,
                                          self.num_nodes)


def release_ranks(trainer: L.Trainer | None, failed: bool) -> None:
    """Call at the end of every job: see :meth:`HydraJobLauncher.finish`."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if isinstance(launcher, HydraJobLauncher):
        launcher.finish(failed)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning keeps the process group after fit; the next job in this process (multirun)
        # must not silently reuse it with another world size.
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- resume / requeue


def requeue_checkpoints(folder: Path) -> list[Path]:
    """Lightning's SLURM requeue checkpoints in ``folder`` (its ``default_root_dir``)."""
    return sorted(Path(folder).glob(REQUEUE_CHECKPOINT_GLOB))


#: What a run leaves in its folder besides checkpoints: moved aside with them by resume=false.
#: ``wandb`` too: its offline runs are of the replaced run's id, and the printed
#: ``wandb sync <run>/wandb/offline-run-*`` would upload them as a second run of the group.
PREVIOUS_RUN_FILES = ("csv", "images", "learning_curve.png", "wandb")


def set_aside_previous_run(checkpoint_dir: Path, run_dir: Path | None = None) -> Path | None:
    """Move a previous run's checkpoints, metrics and images out of the way of a fresh start.

    Left in place, its ``best-*.ckpt`` files would sit beside the new run's, unknown to the new
    ModelCheckpoint (which only ranks and prunes its own) and easily taken for the new best, and
    the CSV logger would delete its ``metrics.csv``. Nothing is deleted: everything goes into
    ``<run>/replaced-<date-time>/``, where ``wandb sync`` can still upload the old run.
    """
    checkpoint_dir = Path(checkpoint_dir)
    parent = Path(run_dir) if run_dir is not None else checkpoint_dir.parent
    moving = [checkpoint_dir] if checkpoint_dir.is_dir() and any(checkpoint_dir.glob("*.ckpt")) \
        else []
    if run_dir is not None:
        moving += [parent / name for name in PREVIOUS_RUN_FILES if (parent / name).exists()]
    if not moving:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = parent / f"replaced-{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = parent / f"replaced-{stamp}-{suffix}"
    target.mkdir(parents=True)
    for path in moving:
        path.rename(target / path.name)
    log.warning("resume=false: the previous run's %s moved to %s",
                ", ".join(path.name for path in moving), target)
    return target


def slurm_restart_count() -> int:
    """How often SLURM restarted this job (requeued or after a node failure); 0 outside SLURM."""
    try:
        return max(int(os.environ.get("SLURM_RESTART_COUNT", "0")), 0)
    except ValueError:
        return 0


def resume_checkpoint(mode: object, checkpoint_dir: Path, requeue_dir: Path,
                      run_dir: Path | None = None) -> str | None:
    """What ``Trainer.fit`` continues from: ``last.ckpt`` or a newer SLURM requeue checkpoint.

    ``resume=false`` holds for a job's first start only: a job SLURM requeued resumes.
    ``resume=false`` deletes stale requeue checkpoints: under SLURM Lightning would otherwise load
    one silently, because it looks for them whenever ``ckpt_path`` is None. Every rank deletes
    them before its own ``fit``, because Lightning picks the checkpoint before the ranks first
    synchronise: deleting on rank 0 only could leave another rank resuming alone.
    """
    requeued = requeue_checkpoints(requeue_dir)
    restarts = slurm_restart_count()
    if str(mode).lower() == "false" and restarts:
        # A requeued job runs its command again, resume=false included: it would start over at
        # every preemption or time limit, deleting the requeue checkpoint made for it.
        if env_global_rank() == 0:
            log.warning("resume=false, but this SLURM job was requeued (SLURM_RESTART_COUNT=%d): "
                        "it continues the run it started instead of starting over again",
                        restarts)
        mode = "auto"
    if str(mode).lower() == "false":
        if requeued and env_global_rank() == 0:
            log.warning("resume=false: removing SLURM requeue checkpoints %s",
                        ", ".join(p.name for p in requeued))
        for path in requeued:
            path.unlink(missing_ok=True)
        if env_global_rank() == 0:
            set_aside_previous_run(Path(checkpoint_dir), run_dir)
        return resolve_resume(mode, checkpoint_dir)
    newest_requeued = max(requeued, key=lambda p: p.stat().st_mtime_ns, default=None)
    last = Path(checkpoint_dir) / "last.ckpt"
    if newest_requeued is not None and (
        not last.is_file() or newest_requeued.stat().st_mtime_ns > last.stat().st_mtime_ns
    ):
        log.info("Resuming from the SLURM requeue checkpoint %s (newer than %s)",
                 newest_requeued, last.name)
        return str(newest_requeued)
    return resolve_resume(mode, checkpoint_dir)


# --------------------------------------------------------------------------- callbacks


class RankReport(L.Callback):
    """One line in each rank's log and ``<output>/ranks/rank<k>.json``: who ran, where, on what.

    On a cluster the first question about a slow or wrong DDP job is whether every rank started,
    on which host and device, with which per-rank batch and which share of the data; the file
    answers it without parsing interleaved logs. Only written when there is more than one rank.
    """

    def __init__(self, output_dir: str | Path, max_indices: int = 64) -> None:
        self.output_dir = Path(output_dir)
        self.max_indices = max_indices
        self.path: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size <= 1:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        indices: list[int] = []
        if isinstance(sampler, PatchStreamSampler):
            indices = sampler.first_samples(self.max_indices)
        elif isinstance(sampler, DistributedSampler):
            indices = [int(i) for i in list(iter(sampler))[: self.max_indices]]
        batch = getattr(loader, "batch_size", None)
        datamodule = trainer.datamodule
        info = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(pl_module.device),
            "strategy": type(trainer.strategy).__name__,
            "launcher": type(trainer.strategy.launcher).__name__,
            "cluster_environment": type(getattr(trainer.strategy, "cluster_environment",
                                                None)).__name__,
            "batch_size_per_rank": batch,
            "global_batch_size": getattr(datamodule, "batch_size", None),
            "sampler": type(sampler).__name__ if sampler is not None else None,
            "train_samples_this_rank": len(sampler) if sampler is not None else None,
            "first_indices": indices,
        }
        if isinstance(sampler, DistributedSampler):
            if sampler.num_replicas != trainer.world_size or sampler.rank != trainer.global_rank:
                log.warning("rank %d: the training sampler shards for rank %d of %d",
                            trainer.global_rank, sampler.rank, sampler.num_replicas)
        else:
            log.warning("rank %d: the training DataLoader has no DistributedSampler, so every "
                        "rank may read the same samples", trainer.global_rank)
        log.info("DDP rank %d/%d (node %d, local %d) on %s %s: %s batch per rank, global %s",
                 trainer.global_rank, trainer.world_size, trainer.node_rank, trainer.local_rank,
                 info["host"], info["device"], batch, info["global_batch_size"])
        folder = self.output_dir / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{trainer.global_rank}.json"
        self.path.write_text(json.dumps(info, indent=2) + "\n")


def distributed_callbacks(output_dir: str | Path) -> list[L.Callback]:
    """The callbacks every job gets; they do nothing in a single-process run outside SLURM.

    No per-rank reseeding: the ranks' patches differ because each takes its own share of the
    patch stream's sample numbers (datamodules/patch_stream.py), not by random state.
    """
    from darkraw.slurm_requeue import SlurmRequeue
    from darkraw.stop_sync import SynchronisedStop

    return [RankReport(output_dir), SynchronisedStop(), SlurmRequeue()]

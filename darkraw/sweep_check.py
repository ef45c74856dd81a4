"""Check every job of a sweep before the first one starts.

Hydra composes a job's config only when its turn comes: a misspelt key ended a sweep in Hydra's
"Could not override" block (its ``+key=`` advice wrong for a typo) after ``multirun.yaml`` was
written, and a wrong value in job 6 of 6 (``model.rdb=after,bfore``) was found when job 6 started,
days into a sweep on SID, its error buried in the scroll-back of the jobs before it. Here each
job's overrides are composed and put through the same config checks as a single run, in the
main process, before Hydra creates anything.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from darkraw.cli import compose_config, override_key, sweep_overrides
from darkraw.errors import DarkrawError

#: Flags that make ``train.py`` a sweep; any other flag (``--cfg``, ``--help``) is Hydra's.
MULTIRUN_FLAGS = ("-m", "--multirun")
#: What submitit's SLURM launcher submits with (sbatch) and checks for (srun).
SLURM_COMMANDS = ("sbatch", "srun")


def sweep_base(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """The sweep's config with Hydra's own, from its fixed (not swept) overrides."""
    sweeps = set(sweep_overrides(overrides))
    return compose_config(config_name, [arg for arg in overrides if arg not in sweeps],
                          with_hydra=True)


def launcher_error(base: DictConfig) -> str | None:
    """Why the sweep's launcher cannot submit from this machine, or None.

    submitit's SLURM launcher ended the sweep in a traceback ("Could not detect srun") after
    Hydra had made the sweep folder.
    """
    target = str(OmegaConf.select(base, "hydra.launcher._target_", default="") or "")
    if not target.endswith("SlurmLauncher"):
        return None
    missing = [name for name in SLURM_COMMANDS if shutil.which(name) is None]
    if not missing:
        return None
    return (f"hydra/launcher=slurm submits each job to SLURM, and this machine has no "
            f"{' or '.join(missing)} on its PATH: it is not a SLURM login node. Launch the "
            "sweep from the cluster's login node; on this machine leave hydra/launcher out "
            "(jobs one after the other) or use hydra/launcher=local (jobs side by side)")


def planned_jobs(base: DictConfig, overrides: Sequence[str]) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's basic sweeper expands them (the sweep config's
    ``hydra.sweeper.params`` first, then the command line); None where another sweeper (Optuna)
    chooses the values as it goes: its fixed overrides make one job to check."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    target = str(OmegaConf.select(base, "hydra.sweeper._target_", default="") or "")
    if not target.endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(base, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_error(config_name: str, job: Sequence[str]) -> str | None:
    """What a single run with ``job``'s overrides would refuse at start, or None."""
    from darkraw.cli import composition_error
    from darkraw.instantiate import instantiate_checked
    from darkraw.training import build_module, check_config

    try:
        cfg = compose_config(config_name, job)  # once per job: a sweep has many
    except Exception:
        # Worded where it can be; the rest Hydra says when the job runs.
        return composition_error(config_name, job)
    darkraw_log = logging.getLogger("darkraw")
    was_disabled, darkraw_log.disabled = darkraw_log.disabled, True
    try:
        # Its warnings are said by the job itself, once, in its log.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_config(cfg, on_this_machine=False)
            build_module(cfg)
            instantiate_checked(cfg.data, _convert_="all")
    except DarkrawError as error:
        from darkraw.cli import user_message

        return user_message(error)
    finally:
        darkraw_log.disabled = was_disabled
    return None


def is_sweep(config_name: str, argv: Sequence[str]) -> bool:
    """``-m``, or a config that asks for a multirun itself (``+sweep=rdb``)."""
    if any(arg in MULTIRUN_FLAGS for arg in argv):
        return True
    if any(arg.startswith("-") for arg in argv):
        return False
    try:
        composed = compose_config(config_name, [a for a in argv if a not in set(_sweeps(argv))],
                            with_hydra=True)
    except Exception:  # not composable: the single-run checks say why
        return False
    return str(composed.hydra.mode).upper().endswith("MULTIRUN")


def _sweeps(argv: Sequence[str]) -> list[str]:
    try:
        return sweep_overrides(argv)
    except Exception:  # an unreadable override: the single-run checks say which
        return []


@dataclass
class SweepCheck:
    """What the check of a sweep found: the error that refuses it, and warnings to say first."""

    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def check_sweep(config_name: str, argv: Sequence[str]) -> SweepCheck:
    """Every job of the sweep ``argv`` checked; nothing to say when ``argv`` is not a sweep, or
    holds flags other than ``-m`` that are Hydra's."""
    overrides = [arg for arg in argv if arg not in MULTIRUN_FLAGS]
    if any(arg.startswith("-") for arg in overrides) or not is_sweep(config_name, argv):
        return SweepCheck()
    if any(override_key(arg) in ("experiment", "name") for arg in _sweeps(overrides)):
        return SweepCheck()  # refused as a whole by the sweep folder's resolver, in its words
    try:
        base = sweep_base(config_name, overrides)
        jobs = planned_jobs(base, overrides)
    except Exception:  # Hydra explains what it cannot expand (a bad sweep syntax) itself
        return SweepCheck()
    message = launcher_error(base)
    if message:
        return SweepCheck(_not_started("the sweep's launcher", message))
    if jobs is None:  # Optuna: the values it will choose are not known yet
        fixed = [arg for arg in overrides if arg not in set(_sweeps(overrides))]
        message = job_error(config_name, fixed)
        return SweepCheck(_not_started("the sweep's fixed overrides", message) if message
                          else None)
    for number, job in enumerate(jobs, start=1):
        message = job_error(config_name, job)
        if message:
            swept = [arg for arg in job if arg not in overrides] or job
            return SweepCheck(_not_started(f"job {number} of {len(jobs)} ({' '.join(swept)})",
                                           message))
    hint = train_longer_hint(base, jobs)
    return SweepCheck(warnings=[hint] if hint else [])


def train_longer_hint(base: DictConfig, jobs: Sequence[Sequence[str]]) -> str | None:
    """Jobs this sweep would start from scratch that an earlier sweep trained, with a checkpoint,
    to another ``trainer.max_steps``: most likely meant to be trained on.

    ``trainer.max_steps`` names the job folders, so "the same sweep, longer" makes new folders:
    the earlier jobs are found among the experiment's sweeps (``multirun/<date>/<time>/<job>``)
    or, for a sweep folder given with ``hydra.sweep.dir``, beside the new jobs.
    """
    from darkraw.resume import runs_with_other_max_steps

    try:
        sweep_dir = Path(str(OmegaConf.select(base, "hydra.sweep.dir"))).absolute()
        excluded = list(OmegaConf.select(
            base, "hydra.job.config.override_dirname.exclude_keys", default=None) or [])
    except Exception:  # an unresolvable folder: no hint, the sweep says the rest
        return None
    root = sweep_dir.parent.parent
    searched, pattern = ((root, "*/*/*/.hydra/overrides.yaml") if root.name == "multirun" else
                         (sweep_dir, "*/.hydra/overrides.yaml"))
    folders = sorted(path.parent.parent for path in searched.glob(pattern))
    # A job folder records its task overrides only: Hydra's own (the sweep folder, the
    # launcher) are not the job's.
    tasks = [[a for a in job if not override_key(a).startswith(("hydra.", "hydra/"))]
             for job in jobs]
    found = [(job, runs) for job in tasks
             if (runs := runs_with_other_max_steps(folders, job, excluded))]
    if not found:
        return None
    job, [(folder, steps), *_] = found[0]
    sweeps = sorted({str(folder.parent) for _, runs in found for folder, _ in runs})
    trained_to = steps if steps is not None else "the config's value"
    command = shlex.join(["python", "train.py", *job, f"hydra.run.dir={folder}"])
    return (f"{len(found)} of the {len(jobs)} jobs of this sweep were trained before to another "
            f"trainer.max_steps, with a checkpoint, in {', '.join(sweeps)}; this sweep trains "
            "them from scratch in new folders (trainer.max_steps names them). To train one of "
            "those jobs longer instead, run it alone in its folder, e.g. the first (trained to "
            f"trainer.max_steps={trained_to}): {command}")


def _not_started(which: str, message: str) -> str:
    end = "" if message.endswith((".", "?", "!")) else "."
    return f"{which}: {message}{end} No job was started: correct the sweep and launch it again"

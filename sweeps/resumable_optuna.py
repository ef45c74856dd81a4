"""Hydra's Optuna sweeper, made to continue a study when its command is run again.

hydra-optuna-sweeper 1.3 keeps the study in memory unless ``storage`` is set, and even with a
storage a rerun asks ``n_trials`` *more* trials, while the trial that was running when the sweep
was killed stays RUNNING for ever and its parameters are never tried again. A search killed after
15 of 20 trials (each possibly hours of GPU time) therefore restarted from scratch.

The sweeper class is ``hydra_plugins.darkraw_sweepers.ResumableOptunaSweeper`` (Hydra accepts
plugins from that package only); what it does is here. With ``hydra.sweeper.storage: null``,
the study lives in ``<sweep folder>/optuna.db`` (SQLite), and a rerun with the same
``hydra.sweep.dir`` (the ``Command:`` line of ``python -m sweeps.compare``):

- keeps every finished trial (TPE learns from them) and runs only the ``n_trials`` still missing;
- marks a trial left RUNNING by the killed launch as FAIL and asks its parameters again first:
  the same parameters make the same override string, so the same job folder, and train.py's
  ``resume=auto`` continues that job from its last checkpoint instead of starting over;
- gives a seeded sampler (``hydra.sweeper.sampler.seed=1``) the seed plus the number of trials
  already in the study: with the first seed again it drew the first trials' parameters again,
  whose job folders (named by those parameters) held finished runs, so every "new" trial ended
  at once with an old trial's value and nothing new was explored.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DB_NAME = "optuna.db"


def quiet_optuna() -> None:
    """Silence two notices that say nothing to a darkraw user: SQLAlchemy 1.4's warning about
    optuna 2.10's models (pinned below 2 for that reason) and "enqueue_trial is experimental"."""
    warnings.filterwarnings("ignore", message=r"Deprecated API features detected")
    warnings.filterwarnings("ignore", message=r"enqueue_trial is experimental")
    warnings.filterwarnings("ignore", message=r"(create|add)_trial is experimental")


def sweep_folder_storage(sweep_dir: str | Path) -> str:
    """The SQLite URL of ``<sweep_dir>/optuna.db`` (the folder is created: SQLite needs it)."""
    folder = Path(sweep_dir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DB_NAME}"


def save_sweep_config(config: Any) -> Path:
    """Write ``<sweep folder>/multirun.yaml``, as Hydra's BasicSweeper does and its Optuna one not.

    ``python -m sweeps.compare`` reads the command line from it: without it the comparison of a
    search has no ``Command:`` line to continue the study with, and no overrides as typed.
    """
    from omegaconf import OmegaConf

    folder = Path(str(config.hydra.sweep.dir))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "multirun.yaml"
    OmegaConf.save(config, path)
    return path


def continued_sampler(sampler_config: Any, trials_so_far: int, sampler: Any) -> Any:
    """``sampler``, or for a seeded one continuing a study, the same one seeded further on.

    The new seed, ``seed + trials_so_far``, is as reproducible as the first: the same sequence
    of commands draws the same trials.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    seed = OmegaConf.select(sampler_config, "seed", default=None)
    if seed is None or trials_so_far == 0:
        return sampler
    log.info("seeded sampler continued with seed %d (%d + the %d trials so far): the first seed "
             "would draw the first trials' parameters again", int(seed) + trials_so_far,
             int(seed), trials_so_far)
    return instantiate(sampler_config, seed=int(seed) + trials_so_far)


def continue_study(study: optuna.Study, n_trials: int) -> tuple[int, int]:
    """Re-queue the interrupted trials of ``study``; return (trials still to run, finished)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in done]
    interrupted = [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in interrupted:
        # optuna 2.10 has no public way to close another process's trial; the storage call is
        # what Study.tell uses underneath.
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params))
    remaining = max(0, n_trials - len(finished))
    if finished or interrupted:
        log.info(
            "continuing Optuna study %r: %d of %d trials finished, %d interrupted one(s) asked "
            "again first (their job folders resume), %d to run",
            study.study_name, len(finished), n_trials, len(interrupted), remaining,
        )
    return remaining, len(finished)

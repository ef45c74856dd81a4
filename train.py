"""Train the low-light restoration network: ``python train.py [overrides]``.

    python train.py                                  # a few CPU minutes on the synthetic set
    python train.py experiment=paper data.root=/data/SID
    python train.py -m model.rdb=after,before        # one job per value, one W&B group

Configs live in conf/ (``python train.py --help`` lists the groups); outputs go to
outputs/<experiment>/runs/<overrides>/ so relaunching a killed run resumes it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

import darkraw.resolvers  # noqa: F401  (registers the resolvers conf/hydra uses for folders)
from darkraw.cli import disk_full_error, exit_on_composition_error, exit_with_user_error
from darkraw.errors import ConfigError, DarkrawError

if TYPE_CHECKING:
    from darkraw.run_lock import RunFolderLock

log = logging.getLogger("darkraw")
#: What the same command does with what a stop before training left behind.
CONTINUES = ("a half-written synthetic set is written again, a half-built cache is completed "
             "and its finished entries are kept")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported here so `--help` and config errors from Hydra come back instantly.
    from darkraw.run_lock import RunFolderInUse, RunFolderLock
    from darkraw.training import is_multirun
    from sweeps.job_status import failed_job_result, is_rank_zero, restore_accepted_hydra_files

    # One training per folder. Extra DDP ranks share rank 0's folder, and its lock.
    folder_lock = RunFolderLock(cfg.paths.output_dir)
    try:
        if is_rank_zero():
            folder_lock.acquire()
    except RunFolderInUse as error:
        # The folder, its record and its files are the other launch's: only Hydra's rewrite of
        # its .hydra files is undone.
        restore_accepted_hydra_files(cfg.paths.output_dir)
        if is_multirun():
            log.error("job not started: %s", error)
            return failed_job_result(error)
        exit_with_user_error(error)
    try:
        return run_job(cfg, folder_lock)
    finally:
        folder_lock.release()  # the next job of a multirun runs in this process


def run_job(cfg: DictConfig, folder_lock: RunFolderLock) -> float:
    """The job, its record kept in ``job_status.json``; ``folder_lock`` is held throughout."""
    from darkraw.run_lock import LOCK_NAME
    from darkraw.slurm_requeue import requeue_at_once_outside_fit
    from darkraw.training import (
        is_multirun,
        job_log_name,
        job_overrides,
        optimized_value,
        train,
    )
    from sweeps.job_status import JobStatus, Terminated, failed_job_result

    # <job folder>/job_status.json says how this job ended (read by `python -m sweeps.compare`).
    status = JobStatus(cfg.paths.output_dir, job_overrides())
    try:
        with requeue_at_once_outside_fit():  # SLURM's time-limit signal before or after fit
            status.start()
            summary = train(cfg, on_accepted=status.accept)
    except DarkrawError as error:
        if isinstance(error, ConfigError) and not status.accepted_launch and not is_multirun():
            # Refused at start: an earlier run in this folder keeps its record, a new folder goes.
            folder_lock.release()
            status.rejected(job_log_name(), LOCK_NAME)
        else:
            status.failed(error)
        if is_multirun():
            # One failing job must not stop the sweep; the error stays in this job's folder.
            log.error("job failed: %s", error)
            return failed_job_result(error)
        exit_with_user_error(error)
    except Exception as error:
        disk_full = disk_full_error(error, (cfg.paths.output_dir, cfg.data.cache_dir))
        if disk_full is not None:  # a write anywhere hit a full disk: say which, no traceback
            status.failed(disk_full)
            if is_multirun():
                log.error("job failed: %s", disk_full)
                return failed_job_result(disk_full)
            exit_with_user_error(disk_full)
        status.failed(error)
        if is_multirun():
            # A bug or a library error, same policy; the traceback is in traceback.txt.
            log.exception("job failed with an unexpected error")
            return failed_job_result(error)
        raise
    except KeyboardInterrupt as error:  # Ctrl-C outside trainer.fit: data, cache, pre-flight
        status.interrupted(error)
        print("\ndarkraw: interrupted (Ctrl-C) before training (data, cache or pre-flight "
              f"check); the same command continues ({CONTINUES})", file=sys.stderr)
        raise SystemExit(130) from None
    except Terminated as error:  # SIGTERM outside trainer.fit (JobStatus's handler): exit 143
        status.interrupted(error)
        if error.trained_step is not None:
            print(f"\ndarkraw: stopped by SIGTERM after training had finished at step "
                  f"{error.trained_step} (testing the best checkpoint or writing the run's "
                  f"summary), exit status {error.code}; the checkpoints are kept: the same "
                  "command ends training at once and does the rest again", file=sys.stderr,
                  flush=True)
            raise
        print("\ndarkraw: stopped by SIGTERM before training (data, cache or pre-flight check), "
              f"exit status {error.code}; the same command continues ({CONTINUES})",
              file=sys.stderr, flush=True)
        raise
    except BaseException as error:  # Ctrl-C in fit (Lightning turns it into SystemExit), exit
        status.interrupted(error)
        raise
    status.completed(summary)
    return optimized_value(summary, cfg.get("optimized_metric", "val/psnr"))


if __name__ == "__main__":
    exit_on_composition_error("train", sys.argv[1:])
    main()

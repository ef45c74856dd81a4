"""SLURM's time-limit warning: finish the step, save ``last.ckpt``, requeue the job.

SLURM sends SIGUSR1 ahead of the time limit (``#SBATCH --signal=USR1@90``,
conf/hydra/launcher/slurm.yaml). Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``)
saves ``hpc_ckpt_<n>.ckpt`` inside the signal handler, wherever training is: in the middle of a
step, between a batch's transfer and its optimizer step. Lightning resumes such a file by
counters it never restores exactly (the logging step one ahead, validation out of step), and the
patch stream had counted the batch in flight. A batch boundary is where every resume in darkraw
is exact (``callbacks/last_checkpoint.py``), so here the signal only asks for the stop Lightning
makes for SIGTERM: the step finishes, ``last.ckpt`` is saved, and as the process exits (its
record written, W&B closed) rank 0 runs ``scontrol requeue``. The requeued job resumes from
``last.ckpt`` (darkraw/distributed.py ``resume_checkpoint``).

Lightning's requeue is turned off for it (:func:`slurm_environment_plugins`), which also ends its
bypass of SIGTERM: the SIGTERM that ``scontrol requeue`` or the time limit sends is a stop too.

Under DDP, SLURM signals every task, each when it gets to it: the request goes through
darkraw/stop_sync.py, which stops every rank after the same step.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

from darkraw.distributed import env_global_rank, external_launcher
from darkraw.stop_sync import ask_to_stop, synchronised_stop

#: The signal ``conf/hydra/launcher/slurm.yaml`` asks SLURM to send before the time limit.
REQUEUE_SIGNAL = signal.SIGUSR1


def under_slurm() -> bool:
    """Whether this process is a SLURM task that Lightning takes its ranks from."""
    return external_launcher() == "SLURM"


def slurm_environment_plugins(configured: Sequence[Any]) -> list[Any]:
    """Lightning's SLURM environment without its own requeue, unless one is configured."""
    if not under_slurm() or any(isinstance(p, ClusterEnvironment) for p in configured):
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def slurm_job_id() -> str | None:
    """The job to requeue: an array task is ``<array job>_<task>``, as scontrol names it."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>``; says plainly when it fails: the job then just ends."""
    command = ["scontrol", "requeue", job_id]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = str(error)
    else:
        if done.returncode == 0:
            print(f"darkraw: requeued SLURM job {job_id}: it resumes from last.ckpt when it "
                  "starts again", file=sys.stderr, flush=True)
            return True
        reason = f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()}"
    print(f"darkraw: error: `{' '.join(command)}` failed ({reason}), so the job is not "
          "requeued. Submit it again (the same command resumes from last.ckpt); if requeueing "
          "is off on this cluster (JobRequeue=0), the launcher's additional_parameters.requeue "
          "must stay true", file=sys.stderr, flush=True)
    return False


@contextlib.contextmanager
def requeue_at_once_outside_fit() -> Iterator[None]:
    """Outside fit (the data, the cache build, the pre-flight check, testing) the time-limit
    signal requeues the job at once; the SIGTERM SLURM then sends ends it as any stop there does.

    Nothing there is a step to finish, and what is half done is completed by the requeued job
    (train.py says so). Left to SLURM's default, SIGUSR1 ended the job unrequeued: on a first
    start the cache build of the whole set can take longer than a time limit's warning.
    :class:`SlurmRequeue` takes over during fit and puts this back after it.
    """
    if not under_slurm() or threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = False

    def requeue_now(signum: int, frame: FrameType | None) -> None:
        nonlocal asked
        job_id = slurm_job_id()
        if asked or env_global_rank() != 0 or not job_id:
            return
        asked = True
        print(f"\ndarkraw: SLURM's time-limit signal ({signal.Signals(signum).name}) outside "
              "training: requeueing the job now", file=sys.stderr, flush=True)
        requeue_job(job_id)

    previous = signal.signal(REQUEUE_SIGNAL, requeue_now)
    try:
        yield
    finally:
        signal.signal(REQUEUE_SIGNAL, previous)


class SlurmRequeue(L.Callback):
    """Turns SLURM's time-limit signal into a stop at the end of the step, then a requeue."""

    def __init__(self) -> None:
        #: The step at which the signal arrived; None: it did not (darkraw/training.py reads it).
        self.signalled_step: int | None = None
        self._previous: Any = None
        self._installed = False
        self._trainer: L.Trainer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signalled_step = None
        if not under_slurm() or threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        self._previous = signal.getsignal(REQUEUE_SIGNAL)
        signal.signal(REQUEUE_SIGNAL, self._on_signal)
        self._installed = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        trainer = self._trainer
        if trainer is None or self.signalled_step is not None:
            return
        self.signalled_step = trainer.global_step
        if trainer.is_global_zero:
            print(f"\ndarkraw: SLURM's time-limit signal ({signal.Signals(signum).name}) at step "
                  f"{trainer.global_step}: stopping after this step to save last.ckpt and "
                  "requeue the job", file=sys.stderr, flush=True)
        # One process: at once, also from inside a validation; several: the step all agree on.
        ask_to_stop(trainer, "SLURM")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning clears its flag as fit begins: a signal during the checkpoint restore or
        # the sanity check would be forgotten (under DDP the request waits in SynchronisedStop).
        if self.signalled_step is not None and trainer.world_size == 1:
            ask_to_stop(trainer, "SLURM")

    def requeue_at_exit(self, trainer: L.Trainer) -> bool:
        """After a stop this signal asked for: rank 0 requeues the job as the process exits.

        At exit, not now: ``scontrol requeue`` sends the job SIGTERM, which would cut short
        the run's record, W&B's closing and the other ranks' release.
        """
        sync = synchronised_stop(trainer)
        if self.signalled_step is None and not (sync is not None and "SLURM" in sync.reasons()):
            return False
        job_id = slurm_job_id()
        if trainer.is_global_zero and job_id:
            atexit.register(requeue_job, job_id)
        return True

    def _restore(self) -> None:
        if self._installed:
            signal.signal(REQUEUE_SIGNAL, self._previous)
            self._installed = False
        self._trainer = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

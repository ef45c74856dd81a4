"""``last.ckpt``: what a killed, preempted or SIGTERM'd run resumes from.

``resume=auto`` continues from ``<output folder>/checkpoints/last.ckpt`` (darkraw/resume.py), so
that file decides how much work a kill costs. This callback owns it (the best-PSNR
``ModelCheckpoint`` has ``save_last: false``) and writes it:

- every ``every_n_train_steps`` optimiser steps, so a kill between two (possibly far apart)
  validations loses at most that many steps; except right before a validation (Lightning would
  skip that validation on resume: its metrics and best-model check would be lost) ...
- ... because it is written after every validation during fit, with that validation's state
  (best scores, health counters); a resumed run does not repeat it;
- when the process gets SIGTERM between batches (below), or a first Ctrl-C (further below), and
  at the end of training.

SIGTERM, as Lightning 2.6.6 handles it outside SLURM: its signal connector replaces the default
handler (which would kill the process at once) with one that only sets
``trainer.received_sigterm``; the training loop raises ``SIGTERMException`` at the end of the
current batch (or between validation batches), ``on_exception`` hooks run, and the exception, a
``SystemExit`` with no code, would end the process with status 0 and *no* checkpoint unless
``ModelCheckpoint(save_on_exception=True)``, which also saves a misnamed "best" file on any error.
Here the batch has finished, so the state is consistent: this callback saves ``last.ckpt`` (unless
it already holds this step) and ``darkraw/training.py`` turns the exception into exit status 143
with a message. On SLURM, the time-limit signal (SIGUSR1) takes the same path and then requeues
the job (darkraw/slurm_requeue.py).

Ctrl-C during fit: Lightning would raise KeyboardInterrupt wherever the process is (possibly
inside an optimiser step, so nothing can be saved safely) and exit 1, losing every step since the
last save. With ``save_on_ctrl_c`` a first Ctrl-C is handled like SIGTERM instead: it sets the
flag Lightning's SIGTERM handler sets (``trainer._signal_connector.received_sigterm``; under DDP
the ranks agree on the step first, darkraw/stop_sync.py), so the current step finishes,
``last.ckpt`` is saved and darkraw exits 130 (128 + SIGINT). The handler then puts the previous
one back: a second Ctrl-C stops at once, as before. DataLoader workers ignore SIGINT
(datamodules/sid_datamodule.py), or the terminal's Ctrl-C would end them under the training
loop's feet.

Writes go through the Trainer's CheckpointIO (``darkraw.checkpoint_io.AtomicCheckpointIO``): a
kill during a write leaves the previous ``last.ckpt``. ``save_last=True`` (not ``"link"``) makes
Lightning *save* the file through that plugin, never symlink or ``shutil.copy`` it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from darkraw.errors import ConfigError
from darkraw.stop_sync import ask_to_stop

log = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """Only ``<dirpath>/last.ckpt``: no top-k files, no version suffixes (resume needs the name)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 1000,
                 save_on_sigterm: bool = True, save_on_ctrl_c: bool = True) -> None:
        if not isinstance(every_n_train_steps, int) or every_n_train_steps < 1:
            raise ConfigError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps!r} must be "
                "a positive number of optimiser steps"
            )
        super().__init__(
            dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
            every_n_train_steps=every_n_train_steps, enable_version_counter=False,
            save_on_train_epoch_end=False,
        )
        self.save_on_sigterm = save_on_sigterm
        self.save_on_ctrl_c = save_on_ctrl_c
        self.saved_step: int | None = None  # the step last.ckpt holds, once written by this process
        #: The step at which a first Ctrl-C arrived (None: none did); darkraw/training.py reads it.
        self.ctrl_c_step: int | None = None
        self._previous_sigint: Any = None
        self._sigint_installed = False

    @property
    def state_key(self) -> str:
        # Distinct from the best-PSNR ModelCheckpoint's key, stable across setting changes.
        return "LastCheckpoint"

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved_step = trainer.global_step

    def _save_last_now(self, trainer: L.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @staticmethod
    def _validation_follows(trainer: L.Trainer) -> bool:
        """Whether Lightning validates right after this training batch (its own rule)."""
        loop = trainer.fit_loop
        try:
            return bool(trainer.enable_validation
                        and loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
        except (AttributeError, TypeError, AssertionError):  # private API: save when unsure
            return False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        # Not right before a validation: a file saved there makes a resumed run skip that
        # validation (Lightning fast-forwards it), losing its metrics and best-model check.
        # on_validation_end saves this step instead.
        if self._validation_follows(trainer):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The post-validation state: best score and health counters included.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.fast_dev_run:
            return
        self._save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_now(trainer)

    # ----------------------------------------------------------------------- Ctrl-C

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ctrl_c_step = None
        if not self.save_on_ctrl_c or trainer.fast_dev_run:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signal.SIGINT)
        if previous in (signal.SIG_IGN, None):
            return  # Ctrl-C is ignored here (e.g. a background job): leave it so

        def first_ctrl_c(signum: int, frame: FrameType | None) -> None:
            self._restore_sigint()  # a second Ctrl-C: the previous behaviour, at once
            self.ctrl_c_step = trainer.global_step
            ask_to_stop(trainer, "Ctrl-C")  # under DDP, every rank after the same step
            if trainer.is_global_zero:
                print("\ndarkraw: Ctrl-C: stopping after this step and saving last.ckpt (Ctrl-C "
                      "again to quit at once, without saving)", file=sys.stderr, flush=True)

        self._previous_sigint = previous
        signal.signal(signal.SIGINT, first_ctrl_c)
        self._sigint_installed = True

    def _restore_sigint(self) -> None:
        if self._sigint_installed:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._sigint_installed = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore_sigint()
        # Only SIGTERM (or a first Ctrl-C, which raises the same): Lightning acts on it between
        # batches, so the state is consistent. Other exceptions (a second Ctrl-C included) can
        # interrupt an optimiser step half-way; the previous last.ckpt is the safer resume point.
        if not (self.save_on_sigterm and isinstance(exception, SIGTERMException)):
            return
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.validating:
            # Mid-validation: a file saved now would resume into half a validation (metrics of
            # the remaining batches only). The previous last.ckpt redoes the step and all of it.
            if trainer.is_global_zero:  # one line, not one per rank
                log.info("stopped during validation: resuming from %s redoes it",
                         self.last_model_path or "the previous last.ckpt")
            return
        if self._last_global_step_saved == trainer.global_step and self.last_model_path:
            if trainer.is_global_zero:
                log.info("stopped: %s already holds step %d", self.last_model_path,
                         trainer.global_step)
            return
        self._save_last_now(trainer)
        if trainer.is_global_zero:
            log.info("stopped: saved %s at step %d", self.last_model_path, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == self.dirpath:
            self.last_model_path = state_dict.get("last_model_path", "")

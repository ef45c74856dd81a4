"""Under DDP, a stop asked of any rank stops every rank after the same step.

SIGTERM (preemption, ``kill -- -PGID``), a first Ctrl-C and SLURM's time-limit signal reach each
rank on its own, each when it gets to it. Lightning acts on its stop flag wherever a rank
stands: between training batches, between validation batches, and its SIGTERM handler even
broadcasts from inside the signal handler. A rank that stopped alone left the other waiting in
a collective: a 2-rank CPU job given SIGTERM hung, unsaved, until it was killed.

Here, with more than one rank, the signal handlers only note the request; after every training
batch the ranks add up their requests (one all-reduce of a few numbers) and, if any rank has
one, all of them set Lightning's flag at that same point, so that all stop after that step and
save ``last.ckpt`` together (callbacks/last_checkpoint.py). A request during a validation is
acted on after the next training batch. A single process keeps Lightning's own handling.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
import torch

#: Why a run may be stopped, in the order of the all-reduced vector.
STOP_REASONS = ("SIGTERM", "Ctrl-C", "SLURM")


class SynchronisedStop(L.Callback):
    """Collects stop requests on each rank; turns them into one stop of all ranks."""

    def __init__(self) -> None:
        #: This rank's requests since fit started.
        self.requested: set[str] = set()
        #: Every rank's requests, once the ranks have agreed to stop (None: they have not).
        self.agreed: set[str] | None = None
        self._previous_sigterm: Any = None
        self._installed = False

    def request(self, reason: str) -> None:
        """Ask for a stop after the current step (from a signal handler: only notes it)."""
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}; one of {STOP_REASONS}")
        self.requested.add(reason)

    def reasons(self) -> set[str]:
        """Why the run stopped, as every rank knows it: all ranks' requests, or this one's."""
        return self.agreed if self.agreed is not None else set(self.requested)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested, self.agreed = set(), None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning put its SIGTERM handler in place (its teardown restores the one from
        # before fit, so this one ends with fit too).
        if trainer.world_size <= 1 or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.request("SIGTERM")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size <= 1 or self.agreed is not None:
            return
        mine = torch.tensor([float(reason in self.requested) for reason in STOP_REASONS],
                            device=trainer.strategy.root_device)
        everyone = trainer.strategy.reduce(mine, reduce_op="sum")
        agreed = {reason for reason, count in zip(STOP_REASONS, everyone.tolist(), strict=True)
                  if count > 0}
        if agreed:
            self.agreed = agreed
            trainer._signal_connector.received_sigterm = True  # Lightning stops after this step

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._installed = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()


def synchronised_stop(trainer: L.Trainer) -> SynchronisedStop | None:
    """The trainer's :class:`SynchronisedStop` when it runs several ranks; None otherwise (a
    single process stops through Lightning's flag directly)."""
    if trainer.world_size <= 1:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, SynchronisedStop)), None)


def ask_to_stop(trainer: L.Trainer, reason: str) -> None:
    """Stop after the current step: Lightning's flag in one process, the agreed stop under DDP."""
    sync = synchronised_stop(trainer)
    if sync is not None:
        sync.request(reason)
    else:
        trainer._signal_connector.received_sigterm = True

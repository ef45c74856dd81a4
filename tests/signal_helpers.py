"""Callbacks that signal their own train.py process at a chosen moment, for the stop tests.

A real SIGTERM through the real handlers, at a moment a test cannot hit from outside by timing
(the test phase after fit lasts a fraction of a second on the fixture's data).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L


class SigtermWhenTesting(L.Callback):
    """SIGTERM at the first test batch: what a SLURM time limit in ``test_after_fit`` does."""

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtFirstStep(L.Callback):
    """SIGTERM after the first training batch: a preemption in the middle of training."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class SlurmTimeLimitSignalMidStep(L.Callback):
    """SLURM's time-limit signal (SIGUSR1) in the middle of a training step, once per ``marker``.

    SLURM sends it ahead of the limit, whenever that falls: here between a batch's transfer and
    its optimizer step, where Lightning's own handler would have written its requeue checkpoint.
    """

    def __init__(self, at_step: int, marker: str) -> None:
        self.at_step, self.marker = at_step, Path(marker)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.at_step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGUSR1)

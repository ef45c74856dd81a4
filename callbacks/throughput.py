"""Training throughput in iterations/s and patches/s, with validation time left out.

Speed is a requirement (the authors' 7x slowdown from decoding raw files each step went unseen
until it cost a week), so it is logged like any other metric and summarised at the end.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from darkraw.errors import ConfigError
from darkraw.logging_steps import off_the_logging_steps, writes_step_metrics


class Throughput(L.Callback):
    """Iterations/s over windows of ``log_every_n_steps`` batches, on Lightning's step axis.

    A window ends on the steps Lightning writes (see :mod:`darkraw.logging_steps`), not after a
    count of its own: counted from the start, or from a validation or a resume at another step,
    it ended between those steps and its value was dropped, so that a resumed run (or one
    validating every 3 steps) logged no throughput at all. Validation pauses the clock: a window
    across it measures training alone.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        if log_every_n_steps < 1:  # ConfigError: one line, not Hydra's instantiate block
            raise ConfigError(f"callbacks.throughput.log_every_n_steps={log_every_n_steps} "
                              "must be >= 1")
        self.log_every_n_steps = log_every_n_steps
        #: When the clock last started: train start, a batch end, a validation end; None while
        #: validating.
        self._mark: float | None = None
        self._window_seconds = 0.0
        self._window_steps = 0
        self._window_patches = 0
        self.total_seconds = 0.0
        self.total_steps = 0
        self.total_patches = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_every = trainer.log_every_n_steps
        if stage == "fit" and log_every and self.log_every_n_steps % log_every:
            raise off_the_logging_steps(
                "callbacks.throughput.log_every_n_steps", self.log_every_n_steps, log_every,
                " (Lightning writes step metrics only on those steps and drops the others)")

    def _stop_clock(self) -> float:
        """Add the time since the clock last started to the window; returns the time now."""
        now = time.perf_counter()
        if self._mark is not None:
            self._window_seconds += now - self._mark
        self._mark = None
        return now

    def _close_window(self) -> None:
        self.total_seconds += self._window_seconds
        self.total_steps += self._window_steps
        self.total_patches += self._window_patches
        self._window_seconds, self._window_steps, self._window_patches = 0.0, 0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop_clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._mark = self._stop_clock()
        self._window_steps += 1
        self._window_patches += int(batch["input"].shape[0]) * trainer.world_size
        if writes_step_metrics(trainer, self.log_every_n_steps) and self._window_seconds > 0:
            pl_module.log("perf/iters_per_sec", self._window_steps / self._window_seconds)
            pl_module.log("perf/patches_per_sec", self._window_patches / self._window_seconds)
            self._close_window()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_clock()
        self._close_window()

    @property
    def mean_iters_per_sec(self) -> float:
        return self.total_steps / self.total_seconds if self.total_seconds else float("nan")

    @property
    def mean_patches_per_sec(self) -> float:
        return self.total_patches / self.total_seconds if self.total_seconds else float("nan")

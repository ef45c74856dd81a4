"""Training throughput in iterations/s and patches/s, with validation time left out.

Speed is a requirement (the authors' 7x slowdown from decoding raw files each step went unseen
until it cost a week), so it is logged like any other metric and summarised at the end.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from darkraw.errors import ConfigError


class Throughput(L.Callback):
    def __init__(self, log_every_n_steps: int = 50) -> None:
        if log_every_n_steps < 1:  # ConfigError: one line, not Hydra's instantiate block
            raise ConfigError(f"callbacks.throughput.log_every_n_steps={log_every_n_steps} "
                              "must be >= 1")
        self.log_every_n_steps = log_every_n_steps
        self._window_start: float | None = None
        self._window_steps = 0
        self._window_patches = 0
        self.total_seconds = 0.0
        self.total_steps = 0
        self.total_patches = 0

    def _restart_window(self) -> None:
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_patches = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart_window()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart_window()

    def _close_window(self) -> None:
        if self._window_start is not None:
            self.total_seconds += time.perf_counter() - self._window_start
            self.total_steps += self._window_steps
            self.total_patches += self._window_patches
        self._window_start = None
        self._window_steps = 0
        self._window_patches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._window_start is None:
            self._restart_window()
            return
        self._window_steps += 1
        self._window_patches += int(batch["input"].shape[0]) * trainer.world_size
        if self._window_steps >= self.log_every_n_steps:
            elapsed = time.perf_counter() - self._window_start
            pl_module.log("perf/iters_per_sec", self._window_steps / elapsed)
            pl_module.log("perf/patches_per_sec", self._window_patches / elapsed)
            self._close_window()
            self._restart_window()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window()

    @property
    def mean_iters_per_sec(self) -> float:
        return self.total_steps / self.total_seconds if self.total_seconds else float("nan")

    @property
    def mean_patches_per_sec(self) -> float:
        return self.total_patches / self.total_seconds if self.total_seconds else float("nan")

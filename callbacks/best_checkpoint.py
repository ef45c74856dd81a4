"""The best-PSNR checkpoint, which a non-finite validation score can never become.

Lightning's ``ModelCheckpoint`` turns a NaN score into -inf (mode max) and still *saves* it while
it holds fewer than ``save_top_k`` files: a run whose first validation is NaN leaves
``best-step0005000-psnrnan.ckpt`` as its "best" model, which eval.py, restore.py and the sweep
summary then pick up. An inf score (e.g. PSNR of a perfect match, or an overflow) would even beat
every real one. Here a non-finite score is not a candidate at all: nothing is saved, the previous
best stays, and a warning names the step and the score.

The score is the logged (and, under DDP, rank-synchronised) validation metric, so every rank makes
the same decision and no collective is skipped on one rank only.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips validations whose monitored score is NaN or infinite."""

    @property
    def state_key(self) -> str:
        # Same key as a plain ModelCheckpoint, so runs started before this class resume its state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            rank_zero_warn(
                f"{self.monitor}={float(current)} at step {trainer.global_step}: not saved as a "
                f"best checkpoint (kept: {self.best_model_path or 'none yet'}). A non-finite "
                "validation score means the network outputs NaN/inf; see docs/training-health.md."
            )
            return False
        return super().check_monitor_top_k(trainer, current)

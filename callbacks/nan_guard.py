"""Skip optimiser steps whose loss or gradients are not finite; stop a run that keeps doing it.

One NaN gradient applied by Adam turns every weight into NaN and the run "trains" on garbage from
then on, exit status 0. Two sources are covered:

- a non-finite loss: ``RestorationModule.training_step`` returns None, which makes Lightning skip
  backward and the optimiser step, and counts it (``nonfinite_total``);
- finite loss, non-finite gradients: here, in ``on_before_optimizer_step``, the gradients are set
  to None, so Adam leaves every parameter (and its moments) untouched.

With ``precision=16-mixed`` the GradScaler has already unscaled the gradients when this hook runs,
recorded the inf/NaN and will skip the step and lower its scale by itself, which is normal while
the scale calibrates at the start of a run. The gradients are then left alone (dropping them would
not change the step, but the scaler owns that decision), and the step is only counted: a run whose
steps *all* overflow (e.g. a NaN in the data) must still stop, so ``max_consecutive`` should leave
room for the scaler's calibration (it halves the scale on each skip: 65536 -> 1 in 16 steps).

Every skipped step is counted in ``train/nonfinite_skipped`` (logged every step, so a flat 0 shows
the guard ran). ``max_consecutive`` skipped steps in a row stop the run with a
:class:`~darkraw.errors.TrainingHealthError` (darkraw/health.py) that names the steps and what to
check. Checkpoints with non-finite weights are refused by ``darkraw.checkpoint_io``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from darkraw.errors import ConfigError
from darkraw.health import HealthCallback


def global_grad_norm(module: torch.nn.Module) -> float | None:
    """The L2 norm of all gradients together (inf/NaN if any is); None when there are none."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads, 2.0)
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0))


_last_norm: dict[str, Any] = {"key": None, "value": None}


def step_grad_norm(trainer: L.Trainer, module: torch.nn.Module) -> float | None:
    """:func:`global_grad_norm` once per optimiser step, shared by the callbacks that need it.

    Reading the norm makes the CPU wait for the GPU; the NaN guard and the learning-health
    callback both need it in ``on_before_optimizer_step``: one wait per step, not two.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.total.ready
    key = (id(trainer), id(module), trainer.global_step, progress)
    if _last_norm["key"] != key:
        _last_norm["key"], _last_norm["value"] = key, global_grad_norm(module)
    return _last_norm["value"]


def uses_grad_scaler(trainer: L.Trainer) -> bool:
    """Whether a (16-mixed) GradScaler decides on skipping inf steps itself."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


class NanGuard(HealthCallback):
    """Skip and count non-finite steps; stop after ``max_consecutive`` in a row."""

    def __init__(self, max_consecutive: int = 25, stop: bool = True) -> None:
        super().__init__()
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ConfigError(
                f"callbacks.nan_guard.max_consecutive={max_consecutive!r} must be a positive "
                "number of steps"
            )
        self.max_consecutive = max_consecutive
        self.stop = stop
        self.consecutive = 0
        self.total_skipped = 0
        self.first_skipped_step: int | None = None
        self._loss_skips_before = 0
        self._grad_skipped = False
        self._last_grad_norm: float | None = None

    # ------------------------------------------------------------------------------- hooks

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._loss_skips_before = int(getattr(pl_module, "nonfinite_total", 0))
        self._grad_skipped = False
        self._last_grad_norm = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        norm = step_grad_norm(trainer, pl_module)
        if norm is None or math.isfinite(norm):
            return
        self._grad_skipped = True
        self._last_grad_norm = norm
        if not uses_grad_scaler(trainer):
            # No gradient, no update: Adam skips parameters whose .grad is None, moments included.
            optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss_skipped = int(getattr(pl_module, "nonfinite_total", 0)) > self._loss_skips_before
        if not hasattr(pl_module, "nonfinite_total"):
            loss_skipped = not outputs or (isinstance(outputs, dict) and "loss" not in outputs)
        skipped = loss_skipped or self._grad_skipped
        # The optimiser step counter has already moved on: this batch was step global_step - 1.
        step = trainer.global_step - 1
        if skipped:
            self.total_skipped += 1
            self.consecutive += 1
            if self.consecutive == 1:
                self.first_skipped_step = step
        else:
            self.consecutive = 0
        pl_module.log("train/nonfinite_skipped", float(self.total_skipped), on_step=True,
                      on_epoch=False, batch_size=1)
        if self.stop and self.decide(trainer, self.consecutive >= self.max_consecutive):
            what = ("a non-finite (NaN/inf) loss" if loss_skipped else
                    f"non-finite (NaN/inf) gradients (global norm {self._last_grad_norm})")
            self.fail(trainer, (
                f"{self.consecutive} optimiser steps in a row (steps {self.first_skipped_step} to "
                f"{step}) had {what} and were skipped; "
                f"{self.total_skipped} skipped in all. Check: the learning rate "
                f"({_current_lr(trainer)}: too high diverges), the data (NaN/inf or absurd "
                "values in inputs or targets; the pre-flight check, data.amplification), "
                "trainer.precision (16-mixed overflows: use bf16-mixed or 32), and "
                "trainer.gradient_clip_val."
            ))

    # ---------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped,
                "first_skipped_step": self.first_skipped_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.total_skipped = int(state_dict.get("total_skipped", 0))
        self.first_skipped_step = state_dict.get("first_skipped_step")


def _current_lr(trainer: L.Trainer) -> str:
    try:
        return f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}"
    except (IndexError, KeyError, AttributeError):
        return "lr unknown"

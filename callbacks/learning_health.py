"""Flag a run that executes without errors but does not learn, while it runs.

The reproduction this project exists for trained 500k iterations with SSIM flat near 0.52, and
nothing said so. Every sign of that failure that can be measured cheaply is logged and checked:

- **plateau**: a monitored metric (val PSNR, val SSIM, the mean training loss between two
  validations) has not improved by its ``min_delta`` for ``warn_after`` validations -> warning;
  for ``patience`` validations -> stop (``stop_on_plateau``). By default the stop needs *every*
  monitored metric to be stuck (``plateau_requires: all``), so a slow but real improvement in any
  of them keeps a long run alive. Counts are validations since a metric last beat its *best* by
  ``min_delta``; the first validation only sets the bests. A chance dip of the (noisy) training
  loss below its best restarts its count, so ``patience`` is the earliest stop, not the usual
  one: docs/training-health.md says by how much and which settings shorten it;
- **collapse**: validation predictions with almost no spatial variation (``health/pred_std`` below
  ``min_pred_std``: the network outputs a constant) or mostly at the clamp limits
  (``health/saturated_fraction``, pixels within ``saturation_tolerance`` of 0 or 1, above
  ``max_saturated_fraction``) for ``collapse_patience`` validations in a row. An untrained network
  saturates most pixels, so one bad validation is not enough;
- **vanishing gradients**: global gradient norm (``health/grad_norm``) below ``min_grad_norm`` for
  ``vanishing_patience`` optimiser steps in a row (e.g. every output clamped: zero gradient).

Messages give the numbers, the steps and what to check. Stopping goes through
:class:`darkraw.health.HealthCallback`: ``trainer.should_stop`` now, a
:class:`~darkraw.errors.TrainingHealthError` (exit status 1) after fit. The counters are part of
checkpoints, so a resumed run keeps counting instead of starting its patience over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from callbacks.nan_guard import step_grad_norm
from darkraw.errors import ConfigError
from darkraw.health import HealthCallback

TRAIN_LOSS = "train/loss"
WHAT_TO_CHECK = (
    "Check: the learning rate (optimizer.lr, the scheduler's decay and min_lr), the input/target "
    "pairing (the pre-flight check; scene ids of short and long files), the amplification "
    "(data.amplification, data.m: a too dark or clipped input), and the validation images in "
    "<output folder>/images."
)


@dataclass
class MetricTrack:
    """Best value of one monitored metric and how many validations since it improved."""

    mode: str
    min_delta: float
    best: float | None = None
    best_step: int | None = None
    stalled: int = 0
    last: float | None = None

    def update(self, value: float, step: int) -> None:
        self.last = value
        if self.best is None or self._improved(value):
            self.best, self.best_step, self.stalled = value, step, 0
        else:
            self.stalled += 1

    def _improved(self, value: float) -> bool:
        assert self.best is not None
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta


MONITOR_KEYS = ("metric", "mode", "min_delta")


def monitor_track(name: str, spec: Mapping[str, Any]) -> tuple[str, MetricTrack]:
    """The metric one ``monitors`` entry watches, and its track; a bad entry named by its key.

    Entries are named without ``/`` (``train_loss``, not ``train/loss``): Hydra's command line
    cannot address a key holding one, so ``monitors.<name>.min_delta=...`` and
    ``monitors.<name>=null`` would be unusable. ``metric`` (default: the name) is the logged
    metric's own name.
    """
    where = f"callbacks.learning_health.monitors.{name}"
    unknown = sorted(str(key) for key in spec if key not in MONITOR_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}: it takes {list(MONITOR_KEYS)}")
    metric, mode, delta = spec.get("metric", name), spec.get("mode", "max"), \
        spec.get("min_delta", 0.0)
    if (not isinstance(metric, str) or mode not in ("max", "min") or isinstance(delta, bool)
            or not isinstance(delta, int | float) or delta < 0):
        raise ConfigError(
            f"{where}: metric must be a metric name, mode max or min and min_delta a number "
            f">= 0, got metric={metric!r}, mode={mode!r}, min_delta={delta!r}"
        )
    return metric, MetricTrack(mode=mode, min_delta=float(delta))


class LearningHealth(HealthCallback):
    """Log health indicators; warn, then stop, on plateau, collapse or vanishing gradients."""

    def __init__(
        self,
        monitors: Mapping[str, Mapping[str, Any]] | None = None,
        warn_after: int = 5,
        patience: int = 20,
        plateau_requires: str = "all",
        stop_on_plateau: bool = True,
        min_pred_std: float = 0.01,
        saturation_tolerance: float = 1e-3,
        max_saturated_fraction: float = 0.95,
        collapse_patience: int = 3,
        stop_on_collapse: bool = True,
        min_grad_norm: float = 1e-7,
        vanishing_patience: int = 200,
        stop_on_vanishing: bool = True,
    ) -> None:
        super().__init__()
        monitors = dict(monitors or {
            "val_psnr": {"metric": "val/psnr", "mode": "max", "min_delta": 0.05},
            "val_ssim": {"metric": "val/ssim", "mode": "max", "min_delta": 0.002},
            "train_loss": {"metric": TRAIN_LOSS, "mode": "min", "min_delta": 0.001},
        })
        self.tracks: dict[str, MetricTrack] = {}
        for name, spec in monitors.items():
            if not spec:
                continue  # `callbacks.learning_health.monitors.val_ssim=null` drops one
            metric, track = monitor_track(str(name), spec)
            self.tracks[metric] = track
        for key, value in (("warn_after", warn_after), ("patience", patience),
                           ("collapse_patience", collapse_patience),
                           ("vanishing_patience", vanishing_patience)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"callbacks.learning_health.{key}={value!r} must be an "
                                  "integer >= 1")
        if plateau_requires not in ("all", "any"):
            raise ConfigError(f"callbacks.learning_health.plateau_requires={plateau_requires!r}"
                              " must be all or any")
        if not 0.0 < max_saturated_fraction <= 1.0:
            raise ConfigError("callbacks.learning_health.max_saturated_fraction must be in "
                              f"(0, 1], got {max_saturated_fraction}")
        self.warn_after, self.patience = warn_after, patience
        self.plateau_requires, self.stop_on_plateau = plateau_requires, stop_on_plateau
        self.min_pred_std, self.saturation_tolerance = min_pred_std, saturation_tolerance
        self.max_saturated_fraction = max_saturated_fraction
        self.collapse_patience, self.stop_on_collapse = collapse_patience, stop_on_collapse
        self.min_grad_norm, self.vanishing_patience = min_grad_norm, vanishing_patience
        self.stop_on_vanishing = stop_on_vanishing

        self.collapsed = 0          # consecutive validations with collapsed predictions
        self.vanishing = 0          # consecutive steps with a vanishing gradient norm
        self.vanishing_since: int | None = None
        self.last_grad_norm: float | None = None
        self._loss_sum = 0.0        # training loss since the last validation
        self._loss_count = 0
        self._pred_std: list[float] = []
        self._saturated: list[float] = []
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------- training

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        norm = step_grad_norm(trainer, pl_module)
        if norm is None or not math.isfinite(norm):
            # A skipped step: the NaN guard's business, not a vanishing gradient. Logged as NaN,
            # or Lightning writes the last step's norm again on this step's row.
            pl_module.log("health/grad_norm", math.nan, on_step=True, on_epoch=False,
                          batch_size=1)
            return
        self.last_grad_norm = norm
        pl_module.log("health/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        step = trainer.global_step
        if norm < self.min_grad_norm:
            self.vanishing += 1
            if self.vanishing_since is None:
                self.vanishing_since = step
        else:
            self.vanishing, self.vanishing_since = 0, None
        vanished = self.decide(trainer, self.vanishing >= self.vanishing_patience)
        if vanished:
            message = (
                f"the gradients vanished: global gradient norm {norm:.3g} < "
                f"{self.min_grad_norm:g} (callbacks.learning_health.min_grad_norm) for "
                f"{self.vanishing} steps in a row since step {self.vanishing_since}: the network "
                "no longer changes. Typical causes: every output pixel clamped at 0 or 1 (a wrong "
                "amplification or target range), a dead network (lr far too high earlier), a "
                "loss that does not depend on the weights. " + WHAT_TO_CHECK
            )
            if self.stop_on_vanishing:
                self.fail(trainer, message)
            else:
                self._warn_once("vanishing", message)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            value = float(loss.detach())
            if math.isfinite(value):
                self._loss_sum += value
                self._loss_count += 1

    # ------------------------------------------------------------------------ validation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pred_std, self._saturated = [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        prediction = outputs.get("prediction") if isinstance(outputs, Mapping) else None
        if not isinstance(prediction, torch.Tensor):
            return
        p = prediction.detach().float()
        # Per image: spatial std per channel, averaged; share of pixels at a clamp limit.
        self._pred_std += p.flatten(2).std(dim=2).mean(dim=1).tolist()
        tol = self.saturation_tolerance
        saturated = ((p <= tol) | (p >= 1.0 - tol)).flatten(1).float().mean(dim=1)
        self._saturated += saturated.tolist()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._pred_std:
            return
        pl_module.log("health/pred_std", sum(self._pred_std) / len(self._pred_std),
                      batch_size=len(self._pred_std))
        pl_module.log("health/saturated_fraction", sum(self._saturated) / len(self._saturated),
                      batch_size=len(self._saturated))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's metrics are computed (callback_metrics holds this validation's).
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # the untrained sanity check and trainer.validate() say nothing about progress
        step = trainer.global_step
        metrics = trainer.callback_metrics
        self._check_collapse(trainer, metrics, step)
        self._check_plateau(trainer, metrics, step)

    # Every rank votes (self.decide, a collective) at every validation, whatever it saw itself:
    # a rank that returned before voting would leave the others waiting forever under DDP.

    def _check_collapse(self, trainer: L.Trainer, metrics: Mapping[str, Any], step: int) -> None:
        constant = clamped = False
        std = saturated = math.nan
        if self._pred_std:
            std = sum(self._pred_std) / len(self._pred_std)
            saturated = sum(self._saturated) / len(self._saturated)
            constant = std < self.min_pred_std
            clamped = saturated > self.max_saturated_fraction
            self.collapsed = self.collapsed + 1 if constant or clamped else 0
        if not self.decide(trainer, self.collapsed >= self.collapse_patience):
            if constant or clamped:
                self.warn(f"darkraw health: step {step}: validation predictions look collapsed "
                          f"(spatial std {std:.4f}, {saturated:.1%} of pixels at 0 or 1); "
                          f"{self.collapsed} of {self.collapse_patience} validations in a row "
                          "before this stops the run.")
            return
        what = []
        if constant:
            what.append(f"a near-constant image (mean spatial std {std:.4g} < "
                        f"{self.min_pred_std:g}, callbacks.learning_health.min_pred_std)")
        if clamped:
            what.append(f"{saturated:.1%} of pixels at the clamp limits 0 or 1 (> "
                        f"{self.max_saturated_fraction:.0%}, "
                        "callbacks.learning_health.max_saturated_fraction)")
        seen = " and ".join(what) or "on another rank"
        message = (f"the predictions collapsed for {self.collapse_patience} validations in a row "
                   f"(now after {step} steps): {seen}. " + WHAT_TO_CHECK)
        if self.stop_on_collapse:
            self.fail(trainer, message)
        else:
            self._warn_once("collapse", message)

    def _check_plateau(self, trainer: L.Trainer, metrics: Mapping[str, Any], step: int) -> None:
        values: dict[str, float] = {}
        for name in self.tracks:
            if name == TRAIN_LOSS:
                if self._loss_count:
                    values[name] = self._loss_sum / self._loss_count
                continue
            value = metrics.get(name)
            if value is not None and math.isfinite(float(value)):
                values[name] = float(value)
        self._loss_sum, self._loss_count = 0.0, 0
        for name, value in values.items():
            self.tracks[name].update(value, step)
        tracked = [self.tracks[name] for name in values]
        combine = all if self.plateau_requires == "all" else any
        stalled_for = 0
        if tracked:
            stalled_for = (min(t.stalled for t in tracked) if self.plateau_requires == "all"
                           else max(t.stalled for t in tracked))
        # The train loss is each rank's own, so ranks can disagree: the vote settles it.
        stop = self.decide(trainer, stalled_for >= self.warn_after
                           and combine(t.stalled >= self.patience for t in tracked))
        if not stop and stalled_for < self.warn_after:
            self._warned.discard("plateau")
            return
        lines = "; ".join(
            f"{name} {t.last:.4g} (best {t.best:.4g} after {t.best_step} steps, not improved by "
            f"{t.min_delta:g} for {t.stalled} validations)"
            for name, t in self.tracks.items() if name in values
        ) or "stalled on another rank"
        baseline = metrics.get("val/psnr_input")
        if baseline is not None and "val/psnr" in values:
            lines += (f"; the amplified input alone scores {float(baseline):.2f} dB "
                      f"(val/psnr_input)")
        if stop and self.stop_on_plateau:
            self.fail(trainer, f"no learning progress after {step} steps: {lines}. "
                      + WHAT_TO_CHECK)
            return
        self._warn_once("plateau", (
            f"darkraw health: step {step}: training looks stuck: {lines}. The run stops after "
            f"{self.patience} validations without improvement "
            f"(callbacks.learning_health.patience) when stop_on_plateau is true. "
            + WHAT_TO_CHECK
        ))

    def _warn_once(self, key: str, message: str) -> None:
        """Warn when a condition starts; again only after it cleared in between."""
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    # ---------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracks": {name: vars(track).copy() for name, track in self.tracks.items()},
            "collapsed": self.collapsed, "vanishing": self.vanishing,
            "vanishing_since": self.vanishing_since,
            # The training loss since the last validation: without it a run resumed just before
            # a validation would judge that interval by the batches after the resume alone.
            "loss_sum": self._loss_sum, "loss_count": self._loss_count,
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, saved in state_dict.get("tracks", {}).items():
            track = self.tracks.get(name)
            if track is not None:
                # The thresholds come from the current config, the progress from the checkpoint.
                for key in ("best", "best_step", "stalled", "last"):
                    setattr(track, key, saved.get(key))
                track.stalled = int(track.stalled or 0)
        self.collapsed = int(state_dict.get("collapsed", 0))
        self.vanishing = int(state_dict.get("vanishing", 0))
        self.vanishing_since = state_dict.get("vanishing_since")
        self._loss_sum = float(state_dict.get("loss_sum", 0.0))
        self._loss_count = int(state_dict.get("loss_count", 0))
        self._warned = set(state_dict.get("warned", ()))

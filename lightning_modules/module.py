"""The LightningModule: training and evaluation of the restoration network.

Metrics are per image (mean over images of each image's PSNR/SSIM, data range 1), the way papers
report them. The module also logs the PSNR of a naive rendering of the amplified input, so every
dashboard shows at a glance whether the network is better than doing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from darkraw.errors import ConfigError
from darkraw.logging_steps import writes_step_metrics
from lightning_modules.config import (
    LossConfig,
    NetConfig,
    OptimizerConfig,
    SchedulerConfig,
    as_dict,
    build,
)
from lightning_modules.losses import L1MSSSIMLoss
from lightning_modules.network import INPUT_CHANNELS, PACKED_MULTIPLE, DarkRestorationNet
from lightning_modules.schedule import (
    decay_after_the_run_warning,
    floor_warning,
    step_decay_scheduler,
)


def _plain(values: Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(values, DictConfig):
        return OmegaConf.to_container(values, resolve=True)  # type: ignore[return-value]
    return dict(values or {})


def naive_rgb(packed: torch.Tensor) -> torch.Tensor:
    """The amplified input shown as an image: R, mean G, B, upsampled 2x, clipped to [0, 1].

    This is the "do nothing" baseline the network must beat, and the input panel's picture.
    """
    r, g1, g2, b = packed.unbind(dim=1)
    rgb = torch.stack([r, (g1 + g2) / 2, b], dim=1).clamp(0, 1)
    return F.interpolate(rgb, scale_factor=2, mode="nearest")


def per_image_psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return peak_signal_noise_ratio(
        prediction, target, data_range=1.0, dim=(1, 2, 3), reduction="none"
    )


def summary_input(image_size: tuple[int, int] | list[int] | None,
                  compile: bool) -> torch.Tensor | None:
    """The packed input of one ``image_size`` (H, W) frame, for Lightning's model summary.

    With it the summary counts the network's FLOPs (about 2 x 41.38 G at the paper's 2048 x 4096)
    and shows input and output sizes; without it Lightning prints "Total FLOPs: 0". It costs one
    no-grad forward when fitting starts. Not when compiling: that forward would compile the
    network for a shape training never uses.
    """
    if image_size is None or compile:
        return None
    multiple = 2 * PACKED_MULTIPLE
    if len(image_size) != 2 or any(
        not isinstance(side, int) or side < multiple or side % multiple for side in image_size
    ):
        raise ConfigError(
            f"model.summary_image_size={list(image_size)!r} (by default data.patch_size, "
            "squared) is not allowed: give [height, width] of a full-resolution image, each a "
            f"multiple of {multiple} (the paper's 2048 x 4096: [2048, 4096]), or null to leave "
            "FLOPs out of the model summary"
        )
    height, width = image_size
    return torch.zeros(1, INPUT_CHANNELS, height // 2, width // 2)


class RestorationModule(L.LightningModule):
    """Adam + step decay on ``L1 + w (1 - MS-SSIM)``; every setting comes from config."""

    def __init__(
        self,
        net: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        train_metrics_every_n_steps: int = 50,
        compile: bool = False,
        summary_image_size: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__()
        self.net_cfg: NetConfig = build(NetConfig, _plain(net), "model")
        self.loss_cfg: LossConfig = build(LossConfig, _plain(loss), "loss")
        self.optim_cfg: OptimizerConfig = build(OptimizerConfig, _plain(optimizer), "optimizer")
        self.sched_cfg: SchedulerConfig = build(SchedulerConfig, _plain(scheduler), "scheduler")
        if train_metrics_every_n_steps < 1:
            raise ValueError(
                f"train_metrics_every_n_steps must be >= 1, got {train_metrics_every_n_steps}"
            )
        # Stored validated and in plain types, so a checkpoint alone rebuilds this module.
        self.save_hyperparameters(
            {
                "net": as_dict(self.net_cfg),
                "loss": as_dict(self.loss_cfg),
                "optimizer": as_dict(self.optim_cfg),
                "scheduler": as_dict(self.sched_cfg),
                "train_metrics_every_n_steps": train_metrics_every_n_steps,
                "compile": compile,
                "summary_image_size": None if summary_image_size is None
                else list(summary_image_size),
            }
        )
        self.net = DarkRestorationNet(rdb=self.net_cfg.rdb)
        self.criterion = L1MSSSIMLoss(**as_dict(self.loss_cfg))
        self.train_metrics_every_n_steps = train_metrics_every_n_steps
        self.compile_net = compile
        self.example_input_array = summary_input(summary_image_size, compile)
        self.nonfinite_steps = 0  # consecutive skipped steps; the NaN guard callback reads it
        self.nonfinite_total = 0
        for stage in ("val", "test"):
            setattr(self, f"{stage}_psnr", PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)))
            setattr(self, f"{stage}_ssim", StructuralSimilarityIndexMeasure(data_range=1.0))
            setattr(self, f"{stage}_psnr_input",
                    PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)))
            # "disable": a NaN image loss makes the mean NaN (the default drops it with a warning,
            # which would hide a broken network behind the other images' average).
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))

    def configure_model(self) -> None:
        # In place, so checkpoint keys keep their names (no "_orig_mod." prefix).
        if self.compile_net:
            self.net.compile()

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.net(packed)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        prediction = self(batch["input"])
        parts = self.criterion(prediction, batch["target"])
        batch_size = prediction.shape[0]
        # Logged on skipped steps too: Lightning would otherwise write the last finite step's
        # values again on this step's row, a plausible flat curve hiding the NaN.
        self.log("train/loss", parts.total, prog_bar=True, batch_size=batch_size)
        self.log("train/l1", parts.l1, batch_size=batch_size)
        self.log("train/ms_ssim", parts.ms_ssim, batch_size=batch_size)
        # Lightning writes step metrics only on some steps and drops values logged at others:
        # compute these on the steps it writes (darkraw.logging_steps).
        trainer = getattr(self, "_trainer", None)
        if trainer is None or writes_step_metrics(trainer, self.train_metrics_every_n_steps):
            with torch.no_grad():
                p, t = prediction.detach().float(), batch["target"].float()
                self.log("train/psnr", per_image_psnr(p, t).mean(), batch_size=batch_size)
                self.log("train/ssim", structural_similarity_index_measure(p, t, data_range=1.0),
                         batch_size=batch_size)
        if not torch.isfinite(parts.total):
            # Returning None skips this optimiser step; the NaN guard stops runs that repeat it.
            self.nonfinite_steps += 1
            self.nonfinite_total += 1
            if trainer is not None and trainer.world_size > 1:
                # DDP: every rank must run backward (Lightning refuses None there). The NaN
                # gradients are all-reduced to every rank, so the NaN guard skips the step on all.
                return parts.total
            return None
        self.nonfinite_steps = 0
        return parts.total

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> dict[str, torch.Tensor]:
        prediction = self(batch["input"])
        target = batch["target"]
        p, t = prediction.float(), target.float()
        getattr(self, f"{stage}_psnr")(p, t)
        getattr(self, f"{stage}_ssim")(p, t)
        getattr(self, f"{stage}_psnr_input")(naive_rgb(batch["input"].float()), t)
        if min(p.shape[-2:]) > self.criterion.min_side:
            getattr(self, f"{stage}_loss")(self.criterion(p, t).total)
            self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), sync_dist=False)
        for name in ("psnr", "ssim", "psnr_input"):
            self.log(f"{stage}/{name}", getattr(self, f"{stage}_{name}"),
                     prog_bar=name == "psnr")
        return {"prediction": prediction.detach()}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        o, s = self.optim_cfg, self.sched_cfg
        optimizer = torch.optim.Adam(self.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                     weight_decay=o.weight_decay)
        # No trainer outside fit: the pre-flight check calls this on its own.
        trainer = getattr(self, "_trainer", None)
        late = (decay_after_the_run_warning(s.milestones, s.gamma, trainer.max_steps)
                if trainer is not None else None)
        for message in (floor_warning(o.lr, s.milestones, s.gamma, s.min_lr), late):
            if message:
                rank_zero_warn(message)
        scheduler = step_decay_scheduler(optimizer, s.milestones, s.gamma, s.min_lr)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

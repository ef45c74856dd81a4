"""Input / prediction / target panels at every validation, as PNG files and in W&B.

Numbers alone did not reveal the reproduction that learned nothing; a glance at its outputs
would have. Panels are written to disk for every run, and logged to W&B when it is a logger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from darkraw.errors import ConfigError
from darkraw.logging_steps import batches_stepped
from lightning_modules.module import naive_rgb

DISPLAY_GAMMA = 2.2  # the naive input has no tone curve; gamma makes it visible, display only
COLUMNS = ("input (amplified, naive RGB)", "prediction", "target")


def _fit(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """Downscale a C x H x W image so its long side is at most ``max_side``."""
    scale = max_side / max(image.shape[-2:])
    if scale >= 1:
        return image
    return F.interpolate(image[None], scale_factor=scale, mode="area")[0]


def make_panel(rows: list[list[torch.Tensor]], gap: int = 4) -> np.ndarray:
    """Tile rows of equally-sized 3 x H x W images in [0, 1] into one H x W x 3 uint8 image."""
    height = max(img.shape[-2] for row in rows for img in row)
    width = max(img.shape[-1] for row in rows for img in row)
    grid = torch.ones(3, len(rows) * (height + gap) - gap, len(rows[0]) * (width + gap) - gap)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            grid[:, top:top + img.shape[-2], left:left + img.shape[-1]] = img
    return (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


class ImagePanel(L.Callback):
    def __init__(self, output_dir: str | Path, num_images: int = 3, max_side: int = 384) -> None:
        # ConfigError, not ValueError: Hydra would bury a ValueError in its instantiate block.
        if num_images < 1:
            raise ConfigError(f"callbacks.image_panel.num_images={num_images} must be >= 1 "
                              "(callbacks.image_panel=null drops the panels)")
        if max_side < 16:
            raise ConfigError(f"callbacks.image_panel.max_side={max_side} must be >= 16 pixels")
        self.output_dir = Path(output_dir)
        self.num_images = num_images
        self.max_side = max_side
        self._rows: list[list[torch.Tensor]] = []
        self._names: list[str] = []
        self.last_panel_path: Path | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._names = [], []

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or outputs is None:
            return
        predictions = outputs["prediction"]
        shown_input = naive_rgb(batch["input"].float()).clamp(0, 1) ** (1 / DISPLAY_GAMMA)
        names = batch.get("name", [f"image{batch_idx}"] * len(predictions))
        for i in range(len(predictions)):
            if len(self._rows) >= self.num_images:
                return
            row = [shown_input[i], predictions[i].float(), batch["target"][i].float()]
            self._rows.append([_fit(img.detach().cpu(), self.max_side) for img in row])
            self._names.append(str(names[i]))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._rows:
            return
        panel = make_panel(self._rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"val_step{trainer.global_step:07d}.png"
        Image.fromarray(panel).save(path)
        self.last_panel_path = path
        caption = (f"after {trainer.global_step} training steps: rows "
                   f"{', '.join(self._names)}; columns " + " | ".join(COLUMNS))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # At the step of this validation's metrics (one below global_step), so that
                # W&B's step slider shows a panel with the scores it was made with.
                logger.log_image(key="val/panel", images=[panel], caption=[caption],
                                 step=batches_stepped(trainer))
        self._rows, self._names = [], []

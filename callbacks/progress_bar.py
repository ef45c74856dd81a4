"""A Rich progress bar for training counted in steps, not epochs.

darkraw trains for ``trainer.max_steps`` with ``max_epochs: -1``. Lightning's bar then reads
"Epoch 7/-2" (its ``max_epochs - 1``) and shows ``v_num``, a fragment of the W&B run id, while
the figure that says how far the run is, the step out of max_steps, is nowhere.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.max_steps and trainer.max_steps > 0:
            items["step"] = f"{trainer.global_step}/{trainer.max_steps}"
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs != -1:
            return super()._get_train_description(current_epoch)
        # No epoch limit: Lightning would write "Epoch 7/-2". Padded as Lightning pads, so the
        # bar does not shift when the validation bar's longer description takes its place.
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"

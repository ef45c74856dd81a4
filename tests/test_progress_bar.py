"""The training bar counts steps out of max_steps, without Lightning's "Epoch N/-2"."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from callbacks.progress_bar import StepProgressBar
from lightning_modules.module import RestorationModule
from tests.test_module import FixedPairs


class RecordingBar(StepProgressBar):
    """The bar itself, recording what it shows at the end of each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[str, dict]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.shown.append((self._get_train_description(trainer.current_epoch),
                           self.get_metrics(trainer, pl_module)))


def test_bar_shows_the_step_out_of_max_steps_and_no_negative_epoch(tmp_path: Path) -> None:
    bar = RecordingBar()
    trainer = L.Trainer(
        max_steps=3, max_epochs=-1, accelerator="cpu", logger=CSVLogger(tmp_path),
        callbacks=[bar], enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, log_every_n_steps=1, default_root_dir=tmp_path,
    )
    # 4 pairs in batches of 2: two epochs, so the epoch number changes under the bar.
    trainer.fit(RestorationModule(train_metrics_every_n_steps=1),
                train_dataloaders=DataLoader(FixedPairs(), batch_size=2))
    descriptions = [description.strip() for description, _ in bar.shown]
    assert descriptions == ["Epoch 0", "Epoch 0", "Epoch 1"]
    assert [metrics["step"] for _, metrics in bar.shown] == ["1/3", "2/3", "3/3"]
    assert all("v_num" not in metrics for _, metrics in bar.shown)
    assert all("train/loss" in metrics for _, metrics in bar.shown)


def test_an_epoch_limit_is_still_shown_as_lightning_does() -> None:
    bar = StepProgressBar()
    bar._trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False)
    assert bar._get_train_description(2).strip() == "Epoch 2/4"

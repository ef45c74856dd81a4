from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.module import RestorationModule, naive_rgb


class FixedPairs(Dataset):
    """A few fixed (input, target) pairs: enough for a real Trainer run."""

    def __init__(self, n: int = 4, packed: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.inputs = torch.rand(n, 4, packed, packed, generator=g) * 2
        self.targets = naive_rgb(self.inputs).clamp(0, 1) * 0.8

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"input": self.inputs[i], "target": self.targets[i],
                "amplification": torch.tensor(1.0), "name": f"pair{i}"}


def test_bad_settings_are_rejected_with_the_key_name() -> None:
    with pytest.raises(ValueError, match=r"model.rdb='sideways'.*'before', 'after'"):
        RestorationModule(net={"rdb": "sideways"})
    with pytest.raises(ValueError, match="optimizer.lr=-0.1"):
        RestorationModule(optimizer={"lr": -0.1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\] in 'optimizer'"):
        RestorationModule(optimizer={"lrr": 1e-4})
    with pytest.raises(ValueError, match="scheduler.gamma"):
        RestorationModule(scheduler={"gamma": 0})


def test_model_summary_input_is_one_packed_image_of_the_configured_size() -> None:
    module = RestorationModule(summary_image_size=[192, 320])
    assert module.example_input_array.shape == (1, 4, 96, 160)
    assert module.hparams["summary_image_size"] == [192, 320]  # rebuilt from a checkpoint too
    assert RestorationModule().example_input_array is None
    # Compiling: a summary forward would compile the network for a shape training never sees.
    compiled = RestorationModule(summary_image_size=[192, 320], compile=True)
    assert compiled.example_input_array is None
    for bad in ([100, 64], [192], [192.0, 320], [0, 64]):
        with pytest.raises(ValueError, match=r"model.summary_image_size=.* multiple of 32"):
            RestorationModule(summary_image_size=bad)


def test_train_psnr_and_ssim_reach_the_logger(tmp_path: Path) -> None:
    """Computed on the steps Lightning writes, not on steps whose values it drops."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    module = RestorationModule(train_metrics_every_n_steps=2)
    trainer = L.Trainer(
        max_steps=4, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader(FixedPairs(), batch_size=2))
    (metrics_csv,) = tmp_path.glob("csv/*/metrics.csv")
    with metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    for key in ("train/psnr", "train/ssim"):
        assert [int(row["step"]) for row in rows if row.get(key)] == [1, 3], key


def test_trainer_run_logs_metrics_and_checkpoint_rebuilds_the_model(tmp_path: Path) -> None:
    module = RestorationModule(
        net={"rdb": "after"},
        optimizer={"lr": 3e-4},
        scheduler={"milestones": [3], "gamma": 0.1, "min_lr": 1e-5},
        train_metrics_every_n_steps=1,
    )
    trainer = L.Trainer(
        max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=2,
        val_check_interval=2, check_val_every_n_epoch=None,
    )
    data = DataLoader(FixedPairs(), batch_size=2)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(FixedPairs(),
                                                                          batch_size=1))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/l1", "train/ms_ssim", "train/psnr", "train/ssim",
                "val/psnr", "val/ssim", "val/psnr_input", "val/loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    # Per-iteration schedule: after 4 steps with a milestone at 3 the lr has decayed.
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-5)

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = RestorationModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert restored.net.rdb == "after"
    assert restored.hparams["scheduler"]["milestones"] == [3]
    x = FixedPairs().inputs[:1]
    module.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(module(x), restored(x))


def test_validation_psnr_is_the_mean_of_per_image_values() -> None:
    module = RestorationModule()
    target = torch.zeros(2, 3, 8, 8)
    prediction = target.clone()
    prediction[0] += 0.1   # 20 dB
    prediction[1] += 0.01  # 40 dB
    module.val_psnr(prediction, target)
    assert module.val_psnr.compute().item() == pytest.approx(30.0, abs=1e-3)


def test_nonfinite_loss_skips_the_step(tmp_path: Path) -> None:
    module = RestorationModule()
    batch = FixedPairs(n=1)[0]
    batch = {"input": batch["input"][None], "target": batch["target"][None] * float("nan")}
    assert module.training_step(batch, 0) is None
    assert module.nonfinite_steps == 1 and module.nonfinite_total == 1

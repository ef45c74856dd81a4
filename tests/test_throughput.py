"""Throughput reaches the loggers on every step they write: across validations and resumes."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from callbacks.throughput import Throughput
from darkraw.errors import ConfigError
from lightning_modules.module import RestorationModule
from tests.test_module import FixedPairs


def fit(root: Path, max_steps: int, throughput: Throughput, ckpt_path: Path | None = None,
        log_every_n_steps: int = 2) -> L.Trainer:
    """A real Trainer validating every 3 steps: windows and validations fall out of step."""
    trainer = L.Trainer(
        max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1,
        logger=CSVLogger(root, name="csv", version=0), log_every_n_steps=log_every_n_steps,
        val_check_interval=3, check_val_every_n_epoch=None, limit_val_batches=1,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[throughput, ModelCheckpoint(dirpath=root / "ckpt", save_last=True,
                                               save_top_k=0)],
        default_root_dir=root,
    )
    loader = DataLoader(FixedPairs(packed=96), batch_size=2)
    trainer.fit(RestorationModule(train_metrics_every_n_steps=2), train_dataloaders=loader,
                val_dataloaders=DataLoader(FixedPairs(n=1, packed=96)), ckpt_path=ckpt_path)
    return trainer


def logged_steps(root: Path, key: str) -> list[int]:
    with (root / "csv" / "version_0" / "metrics.csv").open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get(key)]


def test_throughput_is_logged_on_every_logging_step_through_validations_and_a_resume(
        tmp_path: Path) -> None:
    first = Throughput(log_every_n_steps=2)
    fit(tmp_path / "a", 5, first)
    # Lightning writes step metrics where (step + 1) % 2 == 0; validations after steps 3 (and 6,
    # 9) restarted the old windows at odd counts, whose values it dropped.
    assert logged_steps(tmp_path / "a", "perf/iters_per_sec") == [1, 3]
    assert logged_steps(tmp_path / "a", "perf/iters_per_sec") == logged_steps(tmp_path / "a",
                                                                              "train/psnr")
    assert first.total_steps == 5 and first.mean_iters_per_sec > 0

    # Resumed at step 5 (odd): the old windows counted from the resume and never ended on a
    # written step again, so the rest of the run logged no throughput at all.
    resumed = Throughput(log_every_n_steps=2)
    fit(tmp_path / "b", 10, resumed, ckpt_path=tmp_path / "a" / "ckpt" / "last.ckpt")
    assert logged_steps(tmp_path / "b", "perf/iters_per_sec") == [5, 7, 9]
    assert logged_steps(tmp_path / "b", "perf/patches_per_sec") == [5, 7, 9]
    assert resumed.total_steps == 5  # the steps of this launch


def test_an_interval_lightning_would_drop_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callbacks.throughput.log_every_n_steps=3 is not "
                                          r"allowed: give a multiple of "
                                          r"trainer.log_every_n_steps=2"):
        fit(tmp_path, 2, Throughput(log_every_n_steps=3))

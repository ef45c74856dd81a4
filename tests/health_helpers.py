"""Real data, real Trainer, deliberately broken set-ups for the training-health tests.

Data comes from the generated SID-style set (``synthetic_sid`` fixture) through the real
``conf/data/synthetic.yaml`` data module; the breakage is injected by small wrappers (targets
shuffled against inputs, inputs blown up) or hooks, never by mocking what is tested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from lightning_modules.module import RestorationModule
from tests.helpers import FIXTURE_SET, REPO

# Small and fast on 2 CPU cores; 192 px is the smallest crop MS-SSIM's 5 scales accept.
DATA_OVERRIDES: dict[str, Any] = {
    "patch_size": 192, "batch_size": 2, "num_workers": 0, "persistent_workers": False,
    "val_max_images": 1, "progress": False,
}


def synthetic_datamodule(root: Path, cache_dir: Path, **overrides: Any) -> L.LightningDataModule:
    """The data module of conf/data/synthetic.yaml on the fixture's generated set."""
    cfg = OmegaConf.load(REPO / "conf" / "data" / "synthetic.yaml")
    values = {**DATA_OVERRIDES, "root": str(root), "cache_dir": str(cache_dir), "seed": 0,
              **overrides}
    cfg.synthetic = OmegaConf.merge(cfg.synthetic, FIXTURE_SET)
    for key, value in values.items():
        cfg[key] = value
    return instantiate(cfg)


def restoration_module(lr: float = 5e-4) -> RestorationModule:
    return RestorationModule(optimizer={"lr": lr}, train_metrics_every_n_steps=1)


class _MappedDataset(Dataset):
    """``dataset`` with each sample passed through ``change(index, sample, dataset)``."""

    def __init__(self, dataset: Dataset, change: Callable[[int, dict, Dataset], dict]) -> None:
        self.dataset, self.change = dataset, change

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.change(index, dict(self.dataset[index]), self.dataset)


class BrokenData(L.LightningDataModule):
    """A real data module whose *training* samples are altered by ``change``."""

    def __init__(self, inner: L.LightningDataModule,
                 change: Callable[[int, dict, Dataset], dict]) -> None:
        super().__init__()
        self.inner, self.change = inner, change

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def train_dataloader(self) -> DataLoader:
        loader = self.inner.train_dataloader()
        return DataLoader(_MappedDataset(loader.dataset, self.change),
                          batch_size=loader.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()


def shuffled_targets(index: int, sample: dict, dataset: Dataset) -> dict:
    """Input of pair ``index``, target of the next pair: a pairing by the wrong key."""
    pairs = len(dataset.pairs)  # type: ignore[attr-defined]
    other = dataset[(index % pairs + 1) % pairs]
    return {**sample, "target": other["target"]}


def scaled_inputs(factor: float) -> Callable[[int, dict, Dataset], dict]:
    """Inputs multiplied by ``factor`` (an amplification off by that much)."""

    def change(index: int, sample: dict, dataset: Dataset) -> dict:
        return {**sample, "input": sample["input"] * factor}

    return change


def tiny_trainer(tmp_path: Path, callbacks: list[L.Callback], max_steps: int,
                 val_every: int = 2, **kwargs: Any) -> L.Trainer:
    """A CPU trainer that logs every step to ``tmp_path/metrics.csv`` and saves nothing else."""
    from lightning.pytorch.loggers import CSVLogger

    options: dict[str, Any] = dict(
        accelerator="cpu", max_steps=max_steps, max_epochs=-1, val_check_interval=val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=CSVLogger(tmp_path, name="", version=""),
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def logged(tmp_path: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of one metric in the trainer's metrics.csv."""
    import csv

    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


def learning_health_config(**overrides: Any) -> dict[str, Any]:
    """conf/callbacks/learning_health.yaml's values (without _target_), with overrides."""
    node = OmegaConf.load(REPO / "conf" / "callbacks" / "learning_health.yaml").learning_health
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    values.pop("_target_")
    values.update(overrides)
    return values


def preflight_config(**overrides: Mapping[str, Any] | Any) -> dict[str, Any]:
    """conf/preflight/default.yaml, with nested overrides merged in."""
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "preflight" / "default.yaml"),
                          OmegaConf.create(dict(overrides)))
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return values


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class RankPoison(L.Callback):
    """A NaN in one rank's input at one step: the others must skip that step with it (DDP)."""

    def __init__(self, rank: int = 1, step: int = 1) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch["input"][0, 0, 0, 0] = float("nan")


class FailAtLearningRate(L.Callback):
    """A failure at train start, only in the job whose learning rate is ``lr`` (a sweep axis
    picks the job): a bug that is not a darkraw error (a plain RuntimeError), or with
    ``data_error`` a darkraw DataError, as a damaged file found during training raises."""

    def __init__(self, lr: float, data_error: bool = False) -> None:
        self.lr = lr
        self.data_error = data_error

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.optimizers[0].param_groups[0]["lr"] == self.lr:
            if self.data_error:
                from darkraw.errors import DataError

                raise DataError(f"simulated data error at lr {self.lr}")
            raise RuntimeError(f"simulated bug at lr {self.lr}")

"""Non-finite steps are skipped and counted; K in a row stop the run; NaN never reaches disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins import MixedPrecision
from omegaconf import OmegaConf

from callbacks.last_checkpoint import LastCheckpoint
from callbacks.learning_health import LearningHealth
from callbacks.nan_guard import NanGuard
from darkraw.checkpoint_io import AtomicCheckpointIO
from darkraw.errors import TrainingHealthError
from darkraw.health import raise_if_unhealthy
from tests.health_helpers import (
    all_finite,
    learning_health_config,
    logged,
    restoration_module,
    synthetic_datamodule,
    tiny_trainer,
)
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Poison(L.Callback):
    """Puts a NaN/inf into the batch input or into one gradient at the given optimiser steps."""

    def __init__(self, steps: set[int], where: str, value: float = math.nan) -> None:
        self.steps, self.where, self.value = steps, where, value
        self.weights_before: dict[int, torch.Tensor] = {}
        self.weights_after: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        self.weights_before[step] = next(pl_module.parameters()).detach().clone()
        if self.where == "input" and step in self.steps:
            batch["input"][0, 0, 0, 0] = self.value

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.where == "grad" and trainer.global_step in self.steps:
            next(pl_module.parameters()).grad.view(-1)[0] = self.value

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.weights_after[trainer.global_step - 1] = next(pl_module.parameters()).detach().clone()


@pytest.mark.parametrize("where", ["input", "grad"])
def test_nonfinite_steps_are_skipped_and_counted(synthetic_sid: Path, cache_dir: Path,
                                                 tmp_path: Path, where: str) -> None:
    poison, guard = Poison({1, 3}, where), NanGuard(max_consecutive=3)
    health = LearningHealth(**learning_health_config())
    trainer = tiny_trainer(tmp_path, [poison, guard, health], max_steps=6, val_every=3)
    module = restoration_module()
    trainer.fit(module, synthetic_datamodule(synthetic_sid, cache_dir))
    assert trainer.global_step == 6 and guard.failure is None
    raise_if_unhealthy(trainer)
    assert guard.total_skipped == 2 and all_finite(module)
    for step in (1, 3):  # skipped: no update at all
        assert torch.equal(poison.weights_before[step], poison.weights_after[step])
    assert not torch.equal(poison.weights_before[2], poison.weights_after[2])  # others train
    skipped = logged(tmp_path, "train/nonfinite_skipped")
    assert skipped[0] == 0 and skipped[1] == 1 and skipped[3] == 2 and skipped[5] == 2
    if where == "input":
        # The skipped steps' rows say NaN: they held the previous step's finite loss, a
        # plausible flat curve (and a sweep comparison could never see the NaN).
        loss = logged(tmp_path, "train/loss")
        assert sorted(loss) == list(range(6))
        assert [math.isnan(loss[step]) for step in range(6)] == [
            False, True, False, True, False, False]
    norm = logged(tmp_path, "health/grad_norm")  # likewise: not the last step's norm again
    assert sorted(norm) == list(range(6))
    assert [math.isnan(norm[step]) for step in range(6)] == [False, True, False, True, False, False]


def test_k_nonfinite_steps_in_a_row_stop_the_run(synthetic_sid: Path, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    guard = NanGuard(max_consecutive=3)
    trainer = tiny_trainer(tmp_path, [Poison({2, 3, 4, 5, 6}, "input"), guard], max_steps=40,
                           val_every=20)
    trainer.fit(restoration_module(), synthetic_datamodule(synthetic_sid, cache_dir))
    assert trainer.global_step == 5  # steps 2, 3, 4 skipped: stopped after the third
    with pytest.raises(TrainingHealthError, match=r"(?s)not learning.*3 optimiser steps in a row "
                       r"\(steps 2 to 4\) had a non-finite \(NaN/inf\) loss.*learning rate"):
        raise_if_unhealthy(trainer)


def test_grad_scaler_keeps_handling_overflow(synthetic_sid: Path, cache_dir: Path,
                                             tmp_path: Path) -> None:
    """16-mixed: the GradScaler skips the inf step and lowers its scale; the guard only counts."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    poison, guard = Poison({2}, "grad", math.inf), NanGuard(max_consecutive=3)
    trainer = tiny_trainer(tmp_path, [poison, guard], max_steps=3, val_every=10,
                           plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    module = restoration_module()
    trainer.fit(module, synthetic_datamodule(synthetic_sid, cache_dir))
    assert scaler.get_scale() == 2.0**7  # the scaler saw the inf and backed off once
    assert guard.total_skipped == 1 and all_finite(module)
    assert torch.equal(poison.weights_before[2], poison.weights_after[2])


class Corrupt(L.Callback):
    """Turns one weight into NaN after the optimiser step of ``step`` (a diverged update)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = math.nan


def test_nan_weights_are_never_checkpointed(synthetic_sid: Path, cache_dir: Path,
                                            tmp_path: Path) -> None:
    last = LastCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2)
    trainer = tiny_trainer(tmp_path, [Corrupt(step=3), last], max_steps=6, val_every=10,
                           enable_checkpointing=True, plugins=[AtomicCheckpointIO()])
    with pytest.raises(TrainingHealthError, match=r"refusing to write .*last\.ckpt at step 4"):
        trainer.fit(restoration_module(), synthetic_datamodule(synthetic_sid, cache_dir))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # the last good one stays
    assert all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values()
               if t.is_floating_point())


class PoisonValidation(L.Callback):
    """A NaN in every validation input of the validations run after the given optimiser steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.global_step in self.steps:
            batch["input"][:, :, 0, 0] = math.nan


def test_a_nan_validation_never_becomes_the_best_checkpoint(synthetic_sid: Path, cache_dir: Path,
                                                            tmp_path: Path) -> None:
    cfg = OmegaConf.load(REPO / "conf" / "callbacks" / "model_checkpoint.yaml").model_checkpoint
    cfg.dirpath = str(tmp_path / "checkpoints")
    best = instantiate(cfg)  # conf/callbacks/model_checkpoint.yaml as train.py builds it
    trainer = tiny_trainer(tmp_path, [PoisonValidation({2, 6}), best], max_steps=6, val_every=2,
                           enable_checkpointing=True)
    with pytest.warns(UserWarning, match=r"val/psnr=nan at step 2: not saved .*none yet"):
        trainer.fit(restoration_module(), synthetic_datamodule(synthetic_sid, cache_dir))
    psnr = logged(tmp_path, "val/psnr")
    assert math.isnan(psnr[1]) and math.isnan(psnr[5]) and math.isfinite(psnr[3])
    assert math.isnan(logged(tmp_path, "val/loss")[1])  # not averaged away
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == [f"best-step0000004-psnr{psnr[3]:.2f}.ckpt"]  # step 6's NaN did not replace it
    assert best.best_model_path.endswith(files[0])
    assert math.isfinite(float(best.best_model_score))

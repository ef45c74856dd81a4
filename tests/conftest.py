"""Shared test settings: deterministic, offline, and small enough for 2 CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_sid(tmp_path_factory: pytest.TempPathFactory):
    """A tiny synthetic SID-style set (real DNG files), generated once per test session."""
    from datamodules.synthetic import generate_synthetic_sid

    root = tmp_path_factory.mktemp("synthetic_sid")
    return generate_synthetic_sid(
        root, num_train_scenes=3, num_val_scenes=1, num_test_scenes=1, height=256, width=320,
        shots_per_scene=1, seed=0, progress=False,
    )

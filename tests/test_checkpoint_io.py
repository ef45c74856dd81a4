"""Checkpoint writes are atomic, refuse NaN weights, and check the disk first."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from darkraw.checkpoint_io import AtomicCheckpointIO, partial_path
from darkraw.errors import DiskSpaceError, TrainingHealthError
from darkraw.resume import resolve_resume
from tests.helpers import REPO, subprocess_env

# Saves one large checkpoint after another through AtomicCheckpointIO, each with its index.
WRITER = textwrap.dedent("""
    import sys, torch
    from darkraw.checkpoint_io import AtomicCheckpointIO
    io = AtomicCheckpointIO(reserve_gb=0.0)
    payload = torch.zeros(int(sys.argv[2]) * 2**20 // 4)
    index = 0
    while True:
        payload[0] = index
        io.save_checkpoint({"state_dict": {"w": payload}, "index": index}, sys.argv[1])
        index += 1
""")


@pytest.mark.slow
def test_sigkill_during_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    partial = partial_path(target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "32"], cwd=REPO,
                            env=subprocess_env())
    try:
        deadline = time.monotonic() + 60
        # Wait for one complete checkpoint, then for the next write to be under way.
        while not target.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "writer never saved"
            time.sleep(0.01)
        while not partial.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no write in progress"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    checkpoint = torch.load(target, weights_only=True)
    assert checkpoint["state_dict"]["w"].numel() == 32 * 2**20 // 4
    assert checkpoint["state_dict"]["w"][0] == checkpoint["index"]
    # Only the real checkpoint looks like one; resume finds it, not the partial file.
    assert sorted(p.name for p in target.parent.glob("*.ckpt")) == ["last.ckpt"]
    assert resolve_resume("auto", target.parent) == str(target)
    # The next save replaces the leftover partial file rather than accumulating them.
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert not partial.exists()
    assert torch.load(target, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_refuses_to_write_non_finite_weights(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, target)
    bad = {"state_dict": {"net.w": torch.tensor([1.0, math.nan])}, "global_step": 7,
           "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([math.inf])}}}]}
    with pytest.raises(TrainingHealthError, match=r"refusing to write .*step 7.*net\.w"):
        io.save_checkpoint(bad, target)
    assert torch.load(target, weights_only=True)["global_step"] == 3  # previous one intact
    assert not partial_path(target).exists()


def test_checks_free_space_for_the_checkpoint_size(tmp_path: Path) -> None:
    io = AtomicCheckpointIO(reserve_gb=1e6)  # no disk has a petabyte free
    with pytest.raises(DiskSpaceError, match=r"checkpoint last\.ckpt \(4\.0 MB\).*need .* \(the "
                       r"checkpoint plus checkpoint_io\.reserve_gb=1000000\.0 left free asks"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2**20)}}, tmp_path / "last.ckpt")
    assert not any(tmp_path.iterdir())


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).square().mean()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_checkpoints_go_through_the_plugin(tmp_path: Path) -> None:
    """last.ckpt is *saved* through the Trainer's CheckpointIO (not copied or linked)."""
    from callbacks.last_checkpoint import LastCheckpoint

    last = LastCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2)
    trainer = L.Trainer(max_steps=4, callbacks=[last], plugins=[AtomicCheckpointIO()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(_Tiny())
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4
    # Same trainer set-up with no room on the disk: the save fails loudly with the size.
    full = L.Trainer(max_steps=4, callbacks=[LastCheckpoint(dirpath=str(tmp_path / "full"),
                                                            every_n_train_steps=2)],
                     plugins=[AtomicCheckpointIO(reserve_gb=1e6)], logger=False,
                     enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(DiskSpaceError, match="last.ckpt"):
        full.fit(_Tiny())

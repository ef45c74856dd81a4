"""The training patch stream: what a resumed, a multi-worker and a multi-GPU run train on."""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.patch_stream import PatchStreamSampler, pair_of_sample
from tests.test_sid_datamodule import coded, make_dm  # noqa: F401  (the module's fixture)


def epochs(sampler: PatchStreamSampler, count: int) -> list[list[int]]:
    return [list(sampler) for _ in range(count)]


def test_ranks_split_each_global_batch_of_the_one_device_stream() -> None:
    single = PatchStreamSampler(samples_per_epoch=24, batch_per_rank=4)
    ranks = [PatchStreamSampler(samples_per_epoch=24, batch_per_rank=2, num_replicas=2, rank=r)
             for r in (0, 1)]
    one_device = [s for epoch in epochs(single, 3) for s in epoch]
    per_rank = [[s for epoch in epochs(sampler, 3) for s in epoch] for sampler in ranks]
    assert one_device == list(range(72))  # epochs continue the numbering, never repeat it
    for step in range(18):  # step j: rank 0 then rank 1 hold exactly the one-device batch j
        assert (per_rank[0][2 * step:2 * step + 2] + per_rank[1][2 * step:2 * step + 2]
                == one_device[4 * step:4 * step + 4])
    assert len(single) == 24 and len(ranks[0]) == 12


def test_a_resume_mid_epoch_continues_the_uninterrupted_stream() -> None:
    uninterrupted = PatchStreamSampler(samples_per_epoch=12, batch_per_rank=3)
    reference = [s for epoch in epochs(uninterrupted, 4) for s in epoch]
    resumed = PatchStreamSampler(samples_per_epoch=12, batch_per_rank=3, start_batch=5)
    first = list(resumed)  # the rest of the interrupted epoch (batches 5..7), then whole epochs
    assert first == reference[15:24]
    assert [s for epoch in epochs(resumed, 2) for s in epoch] == reference[24:48]
    peeked = PatchStreamSampler(samples_per_epoch=12, batch_per_rank=3, start_batch=2)
    assert peeked.first_samples(4) == [6, 7, 8, 9]
    assert peeked.first_samples(8) == [6, 7, 8, 9, 10, 11, 12, 13]  # on past the epoch's end
    assert list(peeked)[:4] == [6, 7, 8, 9]  # looking consumed nothing...
    assert peeked.first_samples(4) == [6, 7, 8, 9]  # ...and iterating does not change it


def test_each_pair_once_per_cycle_in_a_seeded_order() -> None:
    orders = [[pair_of_sample(7, n, 5) for n in range(c * 5, c * 5 + 5)] for c in range(4)]
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # reshuffled every cycle
    assert [pair_of_sample(8, n, 5) for n in range(20)] != [p for order in orders for p in order]


def batches(loader: torch.utils.data.DataLoader, count: int) -> list[dict[str, object]]:
    return list(islice(iter(loader), count))


def same_batches(a: list[dict[str, object]], b: list[dict[str, object]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["input"], y["input"]) and torch.equal(x["target"], y["target"])
        and list(x["name"]) == list(y["name"]) for x, y in zip(a, b, strict=True))


def test_workers_do_not_change_the_patches(coded: tuple[Path, Path]) -> None:  # noqa: F811
    settings = {"patches_per_epoch": 16, "hflip_prob": 0.5, "vflip_prob": 0.5}
    in_process = batches(make_dm(coded, **settings).train_dataloader(), 4)
    two_workers = batches(make_dm(coded, num_workers=2, **settings).train_dataloader(), 4)
    assert same_batches(in_process, two_workers)
    other_seed = batches(make_dm(coded, seed=1, **settings).train_dataloader(), 4)
    assert not same_batches(in_process, other_seed)


class _OneWeight(L.LightningModule):
    """The smallest trainable module: what the stream feeds matters here, not what it learns."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.weight * batch["input"].float().mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SaveInsideStep(L.Callback):
    """A checkpoint written inside a step, as SLURM's or a user's signal handler may write it."""

    def __init__(self, at_step: int, path: Path) -> None:
        self.at_step, self.path = at_step, path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            trainer.save_checkpoint(self.path)


def test_the_checkpointed_count_resumes_the_stream(coded: tuple[Path, Path],  # noqa: F811
                                                   tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A real fit counts the batches trained; a checkpoint written inside a step counts the
    batch in flight only once Lightning has trained it (it resumes that batch)."""
    settings = {"patches_per_epoch": 16}
    reference = batches(make_dm(coded, **settings).train_dataloader(), 4)  # one whole epoch
    first = make_dm(coded, **settings)
    inside = tmp_path / "inside_step_2.ckpt"
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[_SaveInsideStep(2, inside)])
    trainer.fit(_OneWeight(), datamodule=first)
    assert first.state_dict()["batches_trained"] == 3
    saved = torch.load(inside, weights_only=False)
    state = saved[type(first).__qualname__]
    assert saved["global_step"] == 2 and state["batches_trained"] == 2
    assert state["train_pairs"] == len(first.datasets["train"].pairs)
    second = make_dm(coded, **settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.sid_datamodule"):
        second.load_state_dict(state)
    assert not caplog.records  # the same set: nothing to say
    assert same_batches(list(second.train_dataloader()), reference[2:4])
    # Another set (fewer pairs here) under the same settings: the stream goes on, said once.
    other = make_dm(coded, **{**settings, "fraction": 0.5})
    with caplog.at_level(logging.WARNING, logger="datamodules.sid_datamodule"):
        other.load_state_dict(state)
    [record] = caplog.records
    assert (f"({state['train_pairs']} training pairs then, {len(other.datasets['train'].pairs)} "
            "now). Its patch stream continues at batch 2 of this set") in record.getMessage()
    validating = make_dm(coded, **settings)
    validating.trainer = SimpleNamespace(training=False)
    validating.on_before_batch_transfer(reference[0], 0)
    assert validating.batches_trained == 0  # validation batches are not training progress


def test_pair_order_is_what_the_dataset_reads(coded: tuple[Path, Path]) -> None:  # noqa: F811
    dataset = make_dm(coded, patches_per_epoch=8, seed=5).datasets["train"]
    names = [dataset[n]["name"] for n in range(8)]
    expected = [dataset.pairs[pair_of_sample(5, n, len(dataset.pairs))].name for n in range(8)]
    assert names == expected
    assert np.unique(names[:len(dataset.pairs)]).size == len(dataset.pairs)


@pytest.mark.parametrize("start", [0, 3])
def test_an_epoch_boundary_start_yields_a_whole_epoch(start: int) -> None:
    sampler = PatchStreamSampler(samples_per_epoch=6, batch_per_rank=2, start_batch=start)
    assert list(sampler) == list(range(2 * start, 6 * (start // 3 + 1)))


def test_a_process_with_live_loader_workers_exits_at_once(coded: tuple[Path, Path]) -> None:  # noqa: F811
    """Workers drop a SIGTERM from others (a group signal is the training process's) but obey
    their parent's: an exit that finds live persistent workers ended them with SIGTERM and hung
    for ever while they ignored it outright."""
    import subprocess
    import sys

    from tests.helpers import REPO, subprocess_env

    root, cache = coded
    script = (
        "from datamodules.sid_datamodule import SIDDataModule\n"
        f"dm = SIDDataModule(root={str(root)!r}, cache_dir={str(cache)!r}, patch_size=32, "
        "batch_size=4, num_workers=2, pin_memory=False, persistent_workers=True, "
        "progress=False, amplification='exposure_ratio')\n"
        "dm.prepare_data(); dm.setup('fit')\n"
        "next(iter(dm.train_dataloader()))\n"
        "print('one batch')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "one batch" in proc.stdout, proc.stderr[-2000:]
    assert "killed by signal" not in proc.stderr

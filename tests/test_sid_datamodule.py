"""Samples, Bayer-safe augmentation, scene fractions, loaders and worker memory, on real DNGs."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, default_collate

from darkraw.errors import ConfigError
from datamodules.cache import build_cache
from datamodules.raw import pack_bayer, unpack_bayer
from datamodules.sid_datamodule import (
    SIDDataModule,
    SIDDataset,
    SyntheticSIDDataModule,
    bayer_augment,
    select_scenes,
)
from tests.test_cache import BLACK, WHITE, write_sid_tree

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96  # coordinates encoded in the short mosaic must stay below the white level


def colour(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Colour of a sensor site in an RGGB mosaic (the two greens are both 'G')."""
    red = (rows % 2 == 0) & (cols % 2 == 0)
    blue = (rows % 2 == 1) & (cols % 2 == 1)
    return np.where(red, "R", np.where(blue, "B", "G"))


@pytest.mark.parametrize("hflip,vflip,transpose", list(itertools.product([False, True], repeat=3)))
def test_bayer_augment_keeps_phase_and_alignment(hflip: bool, vflip: bool, transpose: bool) -> None:
    patch = 8
    size = 2 * (patch + 1)
    rows, cols = np.mgrid[0:size, 0:size]
    mosaic = (rows * 100 + cols).astype(np.uint16)
    target = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint16)
    packed, out_target = bayer_augment(pack_bayer(mosaic), target, patch, hflip, vflip, transpose)
    assert packed.shape == (4, patch, patch) and out_target.shape == (2 * patch, 2 * patch, 3)
    out = unpack_bayer(packed)
    src_r, src_c = out // 100, out % 100
    np.testing.assert_array_equal(src_r, out_target[..., 0])  # input and target: same points
    np.testing.assert_array_equal(src_c, out_target[..., 1])
    out_r, out_c = np.mgrid[0 : 2 * patch, 0 : 2 * patch]
    np.testing.assert_array_equal(colour(src_r, src_c), colour(out_r, out_c))  # still RGGB
    if hflip:
        assert src_c[0, 0] == size - 2  # the mirrored window, shifted by one pixel
    if not (hflip or vflip or transpose):
        np.testing.assert_array_equal(out, mosaic[: 2 * patch, : 2 * patch])


def test_naive_flip_would_break_the_phase() -> None:
    """Sanity check of the check above: flipping the mosaic directly gives GRBG."""
    rows, cols = np.mgrid[0:16, 0:16]
    flipped_r, flipped_c = rows[:, ::-1], cols[:, ::-1]
    assert not np.array_equal(colour(flipped_r, flipped_c), colour(rows, cols))


def test_select_scenes_reproducible_fraction() -> None:
    scenes = [f"{i:05d}" for i in range(161)]
    chosen = select_scenes(scenes, 0.6, seed=7)
    assert len(chosen) == 97 and set(chosen) <= set(scenes) and chosen == sorted(chosen)
    assert select_scenes(list(reversed(scenes)), 0.6, seed=7) == chosen
    assert select_scenes(scenes, 0.6, seed=8) != chosen
    assert len(select_scenes(scenes, 0.001, seed=0)) == 1
    assert select_scenes(scenes, 1.0, seed=0) == scenes
    with pytest.raises(ConfigError, match=r"data\.fraction=0"):
        select_scenes(scenes, 0, seed=0)


def coordinate_mosaics(scene: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Short mosaic value = black + 1 + row * width + col; long: a smooth bright image."""
    rows, cols = np.mgrid[0:height, 0:width]
    short = BLACK + 1 + rows * width + cols
    long = BLACK + 4000 + 3000 * np.sin(rows / 7.0) * np.cos(cols / 11.0) + int(scene) % 7 * 100
    return long, short


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("coded")
    root = write_sid_tree(
        base / "sid", train=("00001", "00002", "00003", "00004"), height=H, width=W,
        mosaic_fn=coordinate_mosaics,
    )
    build_cache(root, base / "cache", "lists", workers=1, progress=False)
    return root, base / "cache"


def make_dm(coded: tuple[Path, Path], **kwargs: object) -> SIDDataModule:
    root, cache = coded
    settings = {
        "root": str(root), "cache_dir": str(cache), "pairs": "lists",
        "amplification": "exposure_ratio", "patch_size": 32, "batch_size": 4, "num_workers": 0,
        "pin_memory": False, "persistent_workers": False, "progress": False, "seed": 0,
        **kwargs,
    }
    dm = SIDDataModule(**settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_train_samples_are_bayer_aligned_and_match_targets(coded: tuple[Path, Path]) -> None:
    dm = make_dm(coded, hflip_prob=0.5, vflip_prob=0.5, transpose_prob=0.5, patches_per_epoch=48)
    dataset = dm.datasets["train"]
    assert len(dataset) == 48
    flips_seen = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample) == {"input", "target", "amplification", "name", "sample"}
        assert int(sample["sample"]) == index
        x, y = sample["input"], sample["target"]
        assert x.dtype == y.dtype == sample["amplification"].dtype == torch.float32
        assert x.shape == (4, 16, 16) and y.shape == (3, 32, 32)
        assert sample["amplification"].ndim == 0 and float(sample["amplification"]) == 100
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        pair = dataset.pairs[dataset.pair_index(index)]
        assert sample["name"] == pair.name
        raw = np.rint(x.numpy() / 100 * (WHITE - BLACK) + BLACK).astype(np.int64)
        code = unpack_bayer(raw) - BLACK - 1
        src_r, src_c = code // W, code % W
        out_r, out_c = np.mgrid[0:32, 0:32]
        np.testing.assert_array_equal(colour(src_r, src_c), colour(out_r, out_c))
        assert src_r[0, 0] % 2 == 0 and src_c[0, 0] % 2 == 0  # Bayer-aligned crop
        full_target = np.asarray(pair.long.open(), dtype=np.float32) / 65535
        np.testing.assert_allclose(  # the target pixel at the input pixel's source point
            y.numpy().transpose(1, 2, 0), full_target[src_r, src_c], atol=1e-7
        )
        flipped = (src_c[0, 1] < src_c[0, 0], src_r[1, 0] < src_r[0, 0])
        flips_seen.add((*flipped, src_r[0, 1] != src_r[0, 0]))
    assert len(flips_seen) > 4  # the augmentations did happen


def test_batches_and_evaluation_images(coded: tuple[Path, Path]) -> None:
    dm = make_dm(coded, val_max_images=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (4, 4, 16, 16) and batch["target"].shape == (4, 3, 32, 32)
    assert batch["amplification"].shape == (4,) and len(batch["name"]) == 4
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0]["input"].shape == (1, 4, H // 2, W // 2)
    assert val[0]["target"].shape == (1, 3, H, W) and val[0]["name"] == ["20001_00_0.1s"]
    test = next(iter(dm.test_dataloader()))
    assert test["input"].shape == (1, 4, H // 2, W // 2)

    cropped = make_dm(coded, full_image_eval=False, batch_size=2)
    batch = next(iter(cropped.val_dataloader()))
    assert batch["input"].shape == (1, 4, 16, 16) and batch["target"].shape == (1, 3, 32, 32)

    estimated = make_dm(coded, amplification="estimated", m=5.0)
    sample = estimated.datasets["val"][0]
    assert 1 <= float(sample["amplification"]) <= 300
    assert float(sample["amplification"]) == pytest.approx(
        estimated.datasets["val"].pairs[0].amplification("estimated", 5.0), rel=1e-6
    )


def test_fraction_and_global_batch(coded: tuple[Path, Path]) -> None:
    dm = make_dm(coded, fraction=0.5, seed=3)
    assert len(dm.train_scenes) == 2
    assert {p.scene for p in dm.datasets["train"].pairs} == set(dm.train_scenes)
    assert make_dm(coded, fraction=0.5, seed=3).train_scenes == dm.train_scenes

    dm.trainer = SimpleNamespace(world_size=2)
    dm.setup("fit")
    assert dm.per_device_batch_size == 2
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ConfigError, match=r"batch_size=4 is the global batch.*3 devices"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("patch_size", 100, r"patch_size=100 must be a positive multiple of 32"),
        ("pairs", "glob", r"data\.pairs='glob'"),
        ("amplification", "gt", r"data\.amplification='gt'"),
        ("vflip_prob", 1.5, r"data\.vflip_prob=1\.5"),
        ("fraction", 0.0, r"data\.fraction=0\.0"),
    ],
)
def test_bad_settings_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SIDDataModule(root="r", cache_dir="c", **{key: value})


def test_patch_larger_than_images(coded: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match=r"patch_size=128 is larger than .*00001_00_0\.1s\.dng"):
        make_dm(coded, patch_size=128)


def test_hydra_configs_instantiate(tmp_path: Path) -> None:
    for name, cls in (("sid", SIDDataModule), ("synthetic", SyntheticSIDDataModule)):
        cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        paths = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "paths" / "default.yaml"),
                                {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "c")})
        root = OmegaConf.create({"paths": paths, "seed": 5, "data": cfg})
        dm = instantiate(root.data)
        assert type(dm) is cls and dm.seed == 5 and str(dm.root).startswith(str(tmp_path))
        init_args = set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
        assert init_args <= set(cfg.keys()), f"{name}.yaml lacks {init_args - set(cfg.keys())}"
    assert isinstance(dm.synthetic["ratios"], list)


# --------------------------------------------------------------------------- worker memory


def collate_with_rss(batch: list[dict]) -> dict:
    """Runs inside the worker: report its resident memory after building each batch."""
    out = default_collate(batch)
    out["rss"] = psutil.Process().memory_info().rss
    return out


def worker_rss_growth(dataset: SIDDataset) -> int:
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_with_rss)
    rss = [int(batch["rss"]) for batch in loader]
    return max(rss) - rss[0]


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("larger")
    scenes = tuple(f"{i:05d}" for i in range(1, 17))
    root = write_sid_tree(base / "sid", train=scenes, height=512, width=768, seed=1)
    return build_cache(root, base / "cache", "lists", workers=1, progress=False)


def test_worker_memory_does_not_grow_with_the_dataset(larger) -> None:
    pairs = larger.splits["train"]
    data_bytes = sum(p.short.array_path.stat().st_size + p.long.array_path.stat().st_size
                     for p in pairs)
    patch_bytes = 4 * (64 * 64 * 4 + 3 * 128 * 128 * 4)  # one float32 batch of 128 px patches
    growth = {}
    for count in (4, 16):
        dataset = SIDDataset(pairs[:count], train=True, patch_size=128, length=96,
                             amplification="exposure_ratio")
        growth[count] = worker_rss_growth(dataset)
    # 16 images of cache are ~50 MB; holding them (or their touched pages) would show here
    assert data_bytes > 45e6
    assert growth[16] < 4 * patch_bytes + 8e6, growth
    assert growth[16] - growth[4] < 4e6, growth


def test_synthetic_datamodule(tmp_path: Path) -> None:
    pytest.importorskip("datamodules.synthetic")
    dm = SyntheticSIDDataModule(
        root=str(tmp_path / "synthetic"), cache_dir=str(tmp_path / "cache"), patch_size=64,
        batch_size=2, num_workers=0, pin_memory=False, persistent_workers=False, progress=False,
        synthetic={"num_train_scenes": 2, "num_val_scenes": 1, "num_test_scenes": 1,
                   "height": 128, "width": 192, "shots_per_scene": 1},
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (2, 4, 32, 32) and batch["target"].shape == (2, 3, 64, 64)
    assert next(iter(dm.val_dataloader()))["input"].shape == (1, 4, 64, 96)


def test_authors_subset_warns_that_validation_scenes_are_trained_on(
    coded: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="datamodules.sid_datamodule"):
        lists = make_dm(coded)
    assert not caplog.records  # SID's lists keep validation scenes out of training
    assert not {p.scene for p in lists.datasets["val"].pairs} & {
        p.scene for p in lists.datasets["train"].pairs}
    with caplog.at_level(logging.WARNING, logger="datamodules.sid_datamodule"):
        authors = make_dm(coded, pairs="authors")
    val_scenes = {p.scene for p in authors.datasets["val"].pairs}
    assert val_scenes and val_scenes <= {p.scene for p in authors.datasets["train"].pairs}
    (record,) = caplog.records
    assert f"{len(val_scenes)} of the validation scenes are also training scenes" in record.message
    assert "test_after_fit=true" in record.message
    authors.setup("fit")  # set up again, as Lightning does after the pre-flight check
    assert len(caplog.records) == 1  # said once per process, not per setup

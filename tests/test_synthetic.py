"""The synthetic SID-style set: SID's layout and names, physical short exposures, safe reuse."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rawpy

from darkraw.errors import ConfigError, DiskSpaceError
from datamodules.raw import read_raw, render_target
from datamodules.sid_lists import pairs_from_authors, pairs_from_lists, parse_sid_name
from datamodules.synthetic import (
    BLACK_LEVEL,
    MARKER_NAME,
    OWNER_NAME,
    WHITE_LEVEL,
    SyntheticLayoutError,
    format_exposure,
    generate_synthetic_sid,
    simulate_short_exposure,
)
from tests.helpers import REPO, subprocess_env

TINY = {"num_train_scenes": 2, "num_val_scenes": 1, "num_test_scenes": 1, "height": 64,
        "width": 96, "shots_per_scene": 2, "seed": 0, "progress": False}
LINE_RE = re.compile(
    r"^\./Sony/short/(?P<short>\d{5}_\d{2}_[0-9.]+s\.dng) "
    r"\./Sony/long/(?P<long>\d{5}_00_10s\.dng) ISO\d+ F8$"
)
LISTS = {"train": "Sony_train_list.txt", "val": "Sony_val_list.txt", "test": "Sony_test_list.txt"}


def dng_files(root: Path) -> dict[str, int]:
    """mtime_ns of every file of the set (names relative to root)."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".lock"}


def age_files(root: Path) -> None:
    """Backdate everything, so a rewrite is visible whatever the file-system time resolution."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def mosaic(path: Path) -> np.ndarray:
    with rawpy.imread(str(path)) as raw:
        return raw.raw_image_visible.astype(np.float64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_sid(tmp_path_factory.mktemp("tiny"), **TINY)


def test_layout_lists_and_names(tiny: Path) -> None:
    assert (tiny / MARKER_NAME).is_file()
    prefixes = {"train": "0", "val": "2", "test": "1"}
    listed: set[str] = set()
    for split, name in LISTS.items():
        lines = (tiny / name).read_text().splitlines()
        scenes = {"train": 2, "val": 1, "test": 1}[split]
        assert len(lines) == scenes * 2
        for line in lines:
            match = LINE_RE.match(line)
            assert match, line
            short, long = parse_sid_name(match["short"]), parse_sid_name(match["long"])
            assert short.scene == long.scene and short.scene.startswith(prefixes[split])
            assert short.split == split
            assert (tiny / "Sony" / "short" / match["short"]).is_file()
            assert (tiny / "Sony" / "long" / match["long"]).is_file()
            listed |= {f"Sony/short/{match['short']}", f"Sony/long/{match['long']}"}
    on_disk = {p.relative_to(tiny).as_posix() for p in (tiny / "Sony").rglob("*") if p.is_file()}
    assert on_disk == listed
    ratios = sorted(min(10 / parse_sid_name(p).exposure, 300) for p in on_disk if "short" in p)
    assert {round(r) for r in ratios} == {100, 250, 300}


def test_every_scene_has_the_authors_shot(tiny: Path) -> None:
    """Shot 00 at 0.1 s exists for every scene, so the authors' subset covers all of them."""
    shorts = sorted(p.name for p in (tiny / "Sony" / "short").iterdir())
    assert [n for n in shorts if "_00_0.1s" in n] == [
        "00001_00_0.1s.dng", "00002_00_0.1s.dng", "10001_00_0.1s.dng", "20001_00_0.1s.dng"]
    pairs = pairs_from_authors(tiny)
    assert [len(pairs[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    lists = pairs_from_lists(tiny)
    assert [len(lists[s]) for s in ("train", "val", "test")] == [4, 2, 2]


def test_files_read_like_sid(tiny: Path) -> None:
    frame = read_raw(tiny / "Sony" / "short" / "00001_00_0.1s.dng")
    assert frame.shape == (64, 96) and frame.black_level == (512,) * 4
    assert frame.white_level == 16383
    long = tiny / "Sony" / "long" / "00001_00_10s.dng"
    with rawpy.imread(str(long)) as raw:
        values = raw.raw_image_visible
        assert values.min() >= BLACK_LEVEL and values.max() <= WHITE_LEVEL
        assert 0.1 < (values.mean() - BLACK_LEVEL) / (WHITE_LEVEL - BLACK_LEVEL) < 0.8
        assert (values >= WHITE_LEVEL).mean() < 0.02  # well exposed, few clipped pixels
        assert raw.other.shutter_speed == pytest.approx(10.0)
    rgb = render_target(long)
    assert rgb.shape == (64, 96, 3) and 0.1 < rgb.mean() / 65535 < 0.9
    assert rgb.reshape(-1, 3).std(axis=0).min() > 1000  # a picture, not a flat field


def test_short_exposures_are_dark_and_noisy(tiny: Path) -> None:
    long = mosaic(tiny / "Sony" / "long" / "00001_00_10s.dng") - BLACK_LEVEL
    for name in ("00001_00_0.1s.dng", "00001_00_0.04s.dng"):
        short = mosaic(tiny / "Sony" / "short" / name) - BLACK_LEVEL
        ratio = 10 / parse_sid_name(name).exposure
        assert short.mean() == pytest.approx(long.mean() / ratio, rel=0.05)
        assert short.max() < 0.05 * (WHITE_LEVEL - BLACK_LEVEL)  # dark
        residual = short - long / ratio
        assert residual.std() > 2.0  # noisy: at least the read noise
        assert short.min() < 0  # noise dips below the black level and is kept


@pytest.mark.parametrize("ratio", [100, 300])
def test_noise_model_on_flat_fields(ratio: int) -> None:
    """Mean = signal / ratio; variance = gain * mean + read^2 + row^2 grows with the signal."""
    gain, read, row = 1.0, 2.0, 0.5
    means, variances = [], []
    for level in (0.0, 1000.0, 4000.0, 12000.0):
        signal = np.full((256, 256), level, np.float32)
        short = simulate_short_exposure(signal, ratio, np.random.default_rng(3), gain=gain,
                                        read_noise=read, row_noise=row).astype(np.float64)
        assert short.min() >= 0
        expected = level / ratio
        means.append(short.mean() - BLACK_LEVEL)
        variances.append(short.var())
        assert means[-1] == pytest.approx(expected, abs=0.1 + 0.02 * expected)
        # rounding to integer DN adds 1/12
        assert variances[-1] == pytest.approx(gain * expected + read**2 + row**2 + 1 / 12,
                                              rel=0.1)
    assert variances == sorted(variances) and variances[-1] > 2 * variances[0]


def test_short_exposure_clips_and_is_seeded() -> None:
    signal = np.full((32, 32), 1e9, np.float32)
    assert simulate_short_exposure(signal, 1, np.random.default_rng(0)).max() == WHITE_LEVEL
    ramp = np.linspace(0, 8000, 32 * 32, dtype=np.float32).reshape(32, 32)
    a = simulate_short_exposure(ramp, 100, np.random.default_rng(5))
    b = simulate_short_exposure(ramp, 100, np.random.default_rng(5))
    c = simulate_short_exposure(ramp, 100, np.random.default_rng(6))
    assert a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_exposure_names_parse_back_to_ratio() -> None:
    assert [format_exposure(10 / r) for r in (100, 250, 300)] == ["0.1", "0.04", "0.033"]
    assert format_exposure(10.0) == "10" and format_exposure(30.0) == "30"
    for ratio in (2, 7, 100, 250, 300, 1000):
        parsed = float(format_exposure(10 / ratio))
        assert min(10 / parsed, 300) == pytest.approx(min(ratio, 300), rel=0.02)


def test_deterministic_by_seed(tmp_path: Path, tiny: Path) -> None:
    small = {**TINY, "num_train_scenes": 1, "shots_per_scene": 1}
    a = generate_synthetic_sid(tmp_path / "a", **small)
    b = generate_synthetic_sid(tmp_path / "b", **{**small, "seed": 1})
    name = "Sony/short/00001_00_0.1s.dng"
    assert (a / name).read_bytes() == (tiny / name).read_bytes()  # subset: same scene bytes
    assert (a / "Sony/long/00001_00_10s.dng").read_bytes() == (
        tiny / "Sony/long/00001_00_10s.dng").read_bytes()
    assert (a / name).read_bytes() != (b / name).read_bytes()


def test_reuse_writes_nothing(tmp_path: Path) -> None:
    root = generate_synthetic_sid(tmp_path / "set", **TINY)
    age_files(root)
    before = dng_files(root)
    assert generate_synthetic_sid(root, **{**TINY, "progress": True}) == root
    assert dng_files(root) == before


def test_missing_marker_or_file_regenerates(tmp_path: Path) -> None:
    root = generate_synthetic_sid(tmp_path / "set", **TINY)
    marker = json.loads((root / MARKER_NAME).read_text())
    age_files(root)
    (root / MARKER_NAME).unlink()
    leftover = root / "Sony" / "short" / ".00001_00_0.1s.dng.123.abcd.darkraw-tmp"
    leftover.write_bytes(b"half a file")
    generate_synthetic_sid(root, **TINY)
    after = dng_files(root)
    assert not leftover.exists()
    assert set(after) == set(marker["files"]) | {MARKER_NAME, OWNER_NAME}
    assert all(mtime > 1_000_000_000 for mtime in after.values())
    assert json.loads((root / MARKER_NAME).read_text()) == marker
    (root / "Sony" / "long" / "00002_00_10s.dng").unlink()  # damaged set, marker intact
    generate_synthetic_sid(root, **TINY)
    assert (root / "Sony" / "long" / "00002_00_10s.dng").is_file()


def test_changed_parameters_regenerate_and_remove_stale_files(tmp_path: Path, caplog) -> None:
    root = generate_synthetic_sid(tmp_path / "set", **TINY)
    with caplog.at_level("WARNING", logger="datamodules.synthetic"):
        generate_synthetic_sid(root, **{**TINY, "num_train_scenes": 1, "shots_per_scene": 1})
    # A set made by hand (another seed, a larger size) is not replaced without a word.
    assert [r.getMessage() for r in caplog.records] == [
        f"data.root={root} holds a synthetic set generated with data.synthetic.num_train_scenes=2 "
        "data.synthetic.shots_per_scene=2: replacing it with one for "
        "data.synthetic.num_train_scenes=1, data.synthetic.shots_per_scene=1 (pass "
        "data.synthetic.num_train_scenes=2 data.synthetic.shots_per_scene=2, or another "
        "data.root, to keep a set)"]
    shorts = sorted(p.name for p in (root / "Sony" / "short").iterdir())
    assert shorts == ["00001_00_0.1s.dng", "10001_00_0.1s.dng", "20001_00_0.1s.dng"]
    assert len((root / LISTS["train"]).read_text().splitlines()) == 1
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["parameters"]["num_train_scenes"] == 1


def test_a_set_with_other_settings_is_kept_and_named_when_replacing_is_off(
        tmp_path: Path) -> None:
    """eval.py's case: the set a model was trained on is never replaced to score it."""
    root = generate_synthetic_sid(tmp_path / "set", **TINY)
    age_files(root)
    before = dng_files(root)
    other = {**TINY, "height": 32, "ratios": [100, 300]}
    with pytest.raises(ConfigError, match=re.escape(
            f"data.root={root} holds the synthetic set generated with other settings than "
            "data.synthetic.height=32, data.synthetic.ratios=[100, 300]; it is not replaced here: "
            "pass data.synthetic.height=64 data.synthetic.ratios=[100,250,300] to score that set, "
            "or another data.root to generate one with these settings")):
        generate_synthetic_sid(root, **other, replace_other_set=False)
    assert dng_files(root) == before
    assert generate_synthetic_sid(root, **TINY, replace_other_set=False) == root  # same: reused
    fresh = generate_synthetic_sid(tmp_path / "new", **other, replace_other_set=False)
    assert json.loads((fresh / MARKER_NAME).read_text())["parameters"]["height"] == 32


def test_refuses_to_delete_real_data(tmp_path: Path) -> None:
    real = tmp_path / "sid" / "Sony" / "short" / "00001_00_0.1s.ARW"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real camera file")
    with pytest.raises(SyntheticLayoutError, match=r"00001_00_0\.1s\.ARW was not written by "
                                                   r"darkraw's .*real dataset") as caught:
        generate_synthetic_sid(tmp_path / "sid", **TINY)
    assert "(and 0 more files)" not in str(caught.value)
    assert real.read_bytes() == b"a real camera file"


def test_refuses_a_sid_style_tree_of_dngs_it_did_not_write(tmp_path: Path) -> None:
    """A converted SID copy (DNGs, list files, no marker) must not be replaced by synthetic data."""
    from tests.test_cache import write_sid_tree

    root = write_sid_tree(tmp_path / "sid", train=("00001",), val=("20001",), test=("10001",))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(SyntheticLayoutError, match=r"looks like a real dataset.*data=sid"):
        generate_synthetic_sid(root, **TINY)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # untouched


@pytest.mark.parametrize("foreign", ["notes.txt", "project/", "Sony/README"])
def test_refuses_a_folder_holding_anything_it_did_not_write(tmp_path: Path, foreign: str) -> None:
    """Not only SID-style files: data.root=~ or a project folder must not receive the set."""
    root = tmp_path / "home"
    path = root / foreign.rstrip("/")
    if foreign.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True)
        path.write_text("someone's")
    (root / ".bashrc").write_text("hidden entries are not counted\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SyntheticLayoutError, match=rf"^{re.escape(str(path))} was not written by "
                                                   r"darkraw's synthetic generator, so .* looks "
                                                   r"like a real dataset or other data"):
        generate_synthetic_sid(root, **TINY)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    path.unlink() if path.is_file() else path.rmdir()
    assert generate_synthetic_sid(root, **TINY) == root  # only hidden entries: its own to use
    assert (root / ".bashrc").read_text() == "hidden entries are not counted\n"


def test_an_interrupted_generation_is_still_its_own_to_redo(tmp_path: Path) -> None:
    root = generate_synthetic_sid(tmp_path / "set", **TINY)
    (root / MARKER_NAME).unlink()  # as if killed before the marker was written
    generate_synthetic_sid(root, **TINY)
    assert (root / MARKER_NAME).is_file()


def test_not_enough_disk_space_is_refused_before_writing(tmp_path: Path) -> None:
    huge = {**TINY, "num_train_scenes": 9999, "height": 60000, "width": 60000}
    with pytest.raises(DiskSpaceError, match=rf"{re.escape(str(tmp_path))}.*need [0-9.]+ GB"):
        generate_synthetic_sid(tmp_path / "big", **huge)
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [({"height": 63}, "height=63"), ({"width": 16}, "width=16"), ({"num_val_scenes": 0},
     "num_val_scenes=0"), ({"ratios": []}, "ratios"), ({"shots_per_scene": 0}, "shots_per"),
     ({"read_noise": -1.0}, "read_noise=-1.0"), ({"ratios": [100, 0.5]}, "ratios")],
)
def test_invalid_parameters(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_synthetic_sid(tmp_path, **{**TINY, **override})


def test_concurrent_generators_share_one_set(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: generate_synthetic_sid(root, **TINY), range(2)))
    assert results == [root, root]
    marker = json.loads((root / MARKER_NAME).read_text())
    assert all((root / f).is_file() for f in marker["files"])


def test_cli(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "datamodules.synthetic", "--root", str(root),
         "--num-train-scenes", "1", "--num-val-scenes", "1", "--num-test-scenes", "1",
         "--height", "64", "--width", "64", "--shots-per-scene", "1", "--no-progress"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(root) in proc.stdout and "3 pairs" in proc.stdout
    assert (root / MARKER_NAME).is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "datamodules.synthetic", "--root", str(root), "--height", "33"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "height=33" in bad.stderr


def test_sizes_below_a_gigabyte_are_said_in_megabytes() -> None:
    """A 2 MB disk read "need 0.01 GB, 0.00 GB free"."""
    from darkraw.disk import GB, size_text

    assert (size_text(8.4 * 1024**2), size_text(0), size_text(3 * GB)) == (
        "8.4 MB", "0.0 MB", "3.00 GB")

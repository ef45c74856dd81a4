"""The packed cache on a tiny real DNG set: contents, reuse, rebuilds, and errors that keep work."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from darkraw.errors import ConfigError, DataError
from datamodules.amplification import estimated_amplification
from datamodules.cache import (
    LOCK_NAME,
    MANIFEST_NAME,
    CacheError,
    _pending_work,
    build_cache,
    entries_dir,
    main,
    open_cache,
)
from datamodules.raw import normalise, pack_bayer, read_raw, render_target
from tests.helpers import REPO, popen_ctrl_c_able, subprocess_env

BLACK, WHITE = 512, 16383
TRAIN, VAL, TEST = ("00001", "00002", "00003"), ("20001",), ("10001",)


def write_sid_tree(
    root: Path,
    train: tuple[str, ...] = TRAIN,
    val: tuple[str, ...] = VAL,
    test: tuple[str, ...] = TEST,
    height: int = 70,
    width: int = 100,
    mosaic_fn=None,
    seed: int = 0,
) -> Path:
    """A SID-style tree of real DNGs: shot 00 at 0.1 s and a 10 s ground truth per scene."""
    from datamodules.dng import write_bayer_dng

    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, scenes in (("train", train), ("val", val), ("test", test)):
        for scene in scenes:
            if mosaic_fn is None:
                bright = rng.uniform(0.05, 0.6) * (WHITE - BLACK)
                long = BLACK + bright * rng.random((height, width)) ** 2
                short = BLACK + (long - BLACK) / 100 + rng.normal(0, 2, (height, width))
            else:
                long, short = mosaic_fn(scene, height, width)
            for folder, name, exposure, data in (
                ("long", f"{scene}_00_10s.dng", 10.0, long),
                ("short", f"{scene}_00_0.1s.dng", 0.1, short),
            ):
                mosaic = np.clip(np.rint(data), 0, WHITE).astype(np.uint16)
                write_bayer_dng(root / "Sony" / folder / name, mosaic, exposure_time=exposure)
            lines[split].append(
                f"./Sony/short/{scene}_00_0.1s.dng ./Sony/long/{scene}_00_10s.dng ISO100 F8"
            )
    for split, split_lines in lines.items():
        (root / f"Sony_{split}_list.txt").write_text("\n".join(split_lines) + "\n")
    return root


def entry_files(cache_dir: Path) -> dict[str, int]:
    """mtime_ns of every array and metadata file: unchanged means not rewritten."""
    return {
        p.relative_to(cache_dir).as_posix(): p.stat().st_mtime_ns
        for p in sorted(entries_dir(cache_dir).rglob("*"))
        if p.is_file() and p.suffix in (".npy", ".json")
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sid_tree(tmp_path_factory.mktemp("sid"))


def test_build_contents_and_reuse(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    index = build_cache(tree, cache, "lists", workers=1, progress=False)
    assert [len(index.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    pair = index.splits["train"][0]
    frame = read_raw(pair.pair.short)
    packed = pair.short.open()
    assert isinstance(packed, np.memmap) and packed.dtype == np.uint16
    assert packed.shape == (4, 32, 48)  # 70x100 cropped to 64x96, packed
    np.testing.assert_array_equal(packed, pack_bayer(frame.mosaic))
    target = pair.long.open()
    assert target.shape == (64, 96, 3) and target.dtype == np.uint16
    np.testing.assert_array_equal(target, render_target(pair.pair.long))
    assert pair.short.black_level == (BLACK,) * 4 and pair.short.white_level == WHITE

    assert pair.amplification("exposure_ratio") == pytest.approx(100)
    expected = estimated_amplification(normalise(np.asarray(packed), BLACK, WHITE), m=5)
    assert pair.amplification("estimated", m=5) == pytest.approx(expected, rel=1e-9)
    assert pair.amplification("estimated", m=1) == pytest.approx(expected / 5, rel=1e-9)

    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    assert manifest["darkraw_cache"] and len(manifest["entries"]) == 10
    meta = json.loads((entries_dir(cache) / f"{pair.pair.short_relpath}.json").read_text())
    assert meta["source"]["size"] == pair.pair.short.stat().st_size and len(meta["source"]["sha1"])
    del packed, target

    before = entry_files(cache)
    assert len(before) == 20
    again = build_cache(tree, cache, "authors", workers=1, progress=False)  # same files
    assert entry_files(cache) == before
    assert [len(again.splits[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert open_cache(tree, cache, "lists").fingerprint == index.fingerprint


def test_a_cache_of_some_splits_holds_only_their_entries_and_completes_later(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What eval.py split=test builds on a fresh cache: the test pair, not the training set."""
    cache = tmp_path / "cache"
    index = build_cache(tree, cache, "lists", workers=1, progress=False, splits=["test"])
    assert list(index.splits) == ["test"] and len(index.splits["test"]) == 1
    assert sorted(json.loads((cache / MANIFEST_NAME).read_text())["entries"]) == sorted(
        [index.splits["test"][0].pair.short_relpath, index.splits["test"][0].pair.long_relpath])
    assert len(entry_files(cache)) == 4  # array + metadata of the short and the long file
    assert list(open_cache(tree, cache, "lists", splits=("test",)).splits) == ["test"]
    with pytest.raises(CacheError, match=r"00001_00_0\.1s\.dng is missing or out of date.*"
                                         r"--pairs lists$"):
        open_cache(tree, cache, "lists")  # all splits: the training entries are not there
    with pytest.raises(CacheError, match=r"build it first: .* --pairs lists --splits val test$"):
        open_cache(tree, cache, "lists", splits=["test", "val"])
    with pytest.raises(ConfigError, match=r"splits=\['tset'\] must name one or more of"):
        build_cache(tree, cache, "lists", workers=1, progress=False, splits=["tset"])

    before = entry_files(cache)
    assert main(["--root", str(tree), "--cache-dir", str(cache), "--splits", "val", "test",
                 "--no-progress"]) == 0
    assert "(lists pairs: val 1, test 1)" in capsys.readouterr().out
    after = entry_files(cache)
    assert len(after) == 8 and all(after[name] == mtime for name, mtime in before.items())
    complete = build_cache(tree, cache, "lists", workers=1, progress=False)
    assert [len(complete.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert len(json.loads((cache / MANIFEST_NAME).read_text())["entries"]) == 10


def test_a_cache_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    """mkdir's FileExistsError traceback, from train.py and from the cache command alike."""
    root = write_sid_tree(tmp_path / "sid", train=("00001",))
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    with pytest.raises(DataError, match=rf"the cache folder {re.escape(str(a_file))} "
                                        r"\(data.cache_dir, or --cache-dir\) is a file, not a "
                                        "folder"):
        build_cache(root, a_file, "lists", workers=1, progress=False)
    with pytest.raises(DataError, match=r"cannot create the cache folder .*Not a directory"):
        build_cache(root, a_file / "sub", "lists", workers=1, progress=False)


def test_an_entry_with_a_damaged_header_is_named_with_the_check_that_rebuilds_it(
        tmp_path: Path) -> None:
    """numpy's "Header info length ... is large" came from inside a loader worker, naming
    neither the cache nor --verify (opening a cache checks sizes only, not contents)."""
    root = write_sid_tree(tmp_path / "sid", train=("00001",))
    cache = tmp_path / "cache"
    build_cache(root, cache, "lists", workers=1, progress=False)
    index = open_cache(root, cache, "lists")
    entry = index.splits["train"][0].short
    data = bytearray(entry.array_path.read_bytes())
    data[8:20] = b"\xff" * 12  # the header's length field and start: same size, damaged
    entry.array_path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=rf"cache entry {re.escape(str(entry.array_path))} "
                                         r"\(of .*\) is damaged \(ValueError: .*\): run "
                                         r"`python -m datamodules.cache .* --verify`"):
        open_cache(root, cache, "lists").splits["train"][0].short.open()
    index = build_cache(root, cache, "lists", workers=1, progress=False, verify=True)
    assert index.splits["train"][0].short.open().shape == entry.shape  # rebuilt


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of this test's own, to remount read-only; skipped where mounting is not
    allowed (it needs root with mount rights, as on this project's CI machines)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_complete_cache_on_a_read_only_mount_is_used_as_it_is(tmp_path: Path,
                                                                tmpfs: Path) -> None:
    """A shared dataset mount: the build lock alone made the cache unusable, as a traceback."""
    root = write_sid_tree(tmp_path / "sid", train=("00001",), val=("10001",))
    cache = tmpfs / "cache"
    built = build_cache(root, cache, "lists", workers=1, progress=False, splits=["val"])
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    again = build_cache(root, cache, "lists", workers=1, progress=False, splits=["val"])
    assert [p.name for p in again.splits["val"]] == [p.name for p in built.splits["val"]]
    with pytest.raises(CacheError, match=r"is read-only and cannot be completed here \(.*"
                                         r"build it once where it can be written"):
        build_cache(root, cache, "lists", workers=1, progress=False)  # train is not cached
    with pytest.raises(CacheError, match=r"is read-only: --verify .* would have to rebuild"):
        build_cache(root, cache, "lists", workers=1, progress=False, splits=["val"],
                    verify=True)


def test_touched_source_is_rehashed_not_rebuilt(tmp_path: Path) -> None:
    root = write_sid_tree(tmp_path / "sid", train=("00001",))
    cache = tmp_path / "cache"
    build_cache(root, cache, "lists", workers=1, progress=False)
    before = entry_files(cache)
    source = root / "Sony/short/00001_00_0.1s.dng"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match=r"00001_00_0\.1s\.dng is missing or out of date"):
        open_cache(root, cache, "lists")  # setup never hashes: it asks for a build
    build_cache(root, cache, "lists", workers=1, progress=False)
    after = entry_files(cache)
    npy = "entries/Sony/short/00001_00_0.1s.dng.npy"
    assert after[npy] == before[npy]  # same content: array kept

    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF  # same size, new content
    source.write_bytes(bytes(data))
    build_cache(root, cache, "lists", workers=1, progress=False)
    assert entry_files(cache)[npy] != before[npy]


def test_interrupted_build_is_completed(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_cache(tree, cache, "lists", workers=1, progress=False)
    before = entry_files(cache)
    entries = entries_dir(cache)
    # a crash between the array and its metadata, a truncated array, a temp file, no manifest
    (entries / "Sony/short/00002_00_0.1s.dng.json").unlink()
    truncated = entries / "Sony/long/00003_00_10s.dng.npy"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    temp = entries / "Sony/short/.00001_00_0.1s.dng.npy.tmp-otherhost-1-abcdef12"
    temp.write_bytes(b"half")
    os.utime(temp, (0, 0))
    (cache / MANIFEST_NAME).unlink()
    with pytest.raises(CacheError, match="no darkraw cache"):
        open_cache(tree, cache, "lists")

    build_cache(tree, cache, "lists", workers=1, progress=False)
    after = entry_files(cache)
    rebuilt = {k for k in after if after[k] != before.get(k)}
    assert rebuilt == {
        "entries/Sony/short/00002_00_0.1s.dng.npy",
        "entries/Sony/short/00002_00_0.1s.dng.json",
        "entries/Sony/long/00003_00_10s.dng.npy",
        "entries/Sony/long/00003_00_10s.dng.json",
    }
    assert not temp.exists()
    index = open_cache(tree, cache, "lists")
    assert index.splits["train"][2].long.open().shape == (64, 96, 3)


def test_verify_finds_same_size_damage_and_rebuilds_only_that(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A zeroed block or a flipped byte keeps every size and date: only the checksum sees it."""
    cache = tmp_path / "cache"
    build_cache(tree, cache, "lists", workers=1, progress=False)
    entries = entries_dir(cache)
    zeroed = entries / "Sony/short/00001_00_0.1s.dng.npy"
    flipped = entries / "Sony/long/20001_00_10s.dng.npy"
    unrecorded = entries / "Sony/short/10001_00_0.1s.dng.json"
    expected = {path: np.load(path).copy() for path in (zeroed, flipped)}
    data = bytearray(zeroed.read_bytes())
    data[-2000:] = bytes(2000)  # a bad block at the end of the array
    zeroed.write_bytes(bytes(data))
    data = bytearray(flipped.read_bytes())
    data[500] ^= 0x10
    flipped.write_bytes(bytes(data))
    meta = json.loads(unrecorded.read_text())
    del meta["array"]["sha1"]  # as written before checksums were recorded
    unrecorded.write_text(json.dumps(meta))
    before = entry_files(cache)

    build_cache(tree, cache, "lists", workers=1, progress=False)  # sizes only: nothing seen
    assert entry_files(cache) == before
    with caplog.at_level("INFO", logger="datamodules.cache"):
        index = build_cache(tree, cache, "lists", workers=1, progress=False, verify=True)
    after = entry_files(cache)
    rebuilt = {k for k in after if after[k] != before[k]}
    assert rebuilt == {
        f"entries/{name}{suffix}"
        for name in ("Sony/short/00001_00_0.1s.dng", "Sony/long/20001_00_10s.dng",
                     "Sony/short/10001_00_0.1s.dng")
        for suffix in (".npy", ".json")
    }
    for path, array in expected.items():
        np.testing.assert_array_equal(np.load(path), array)
    assert "sha1" in json.loads(unrecorded.read_text())["array"]
    text = caplog.text
    assert f"{zeroed} does not match its checksum" in text and f"{flipped} does not" in text
    assert "1 cache entries in" in text and "no checksum" in text
    assert "verified 9 cache entries" in text and "2 damaged, 1 without a checksum" in text
    assert len(index.splits["train"]) == 3

    caplog.clear()
    with caplog.at_level("INFO", logger="datamodules.cache"):
        build_cache(tree, cache, "lists", workers=1, progress=False, verify=True)
    assert entry_files(cache) == after
    assert "verified 10 cache entries" in caplog.text and "0 damaged, 0 without" in caplog.text


def test_verify_from_the_command_line_and_the_data_module(tree: Path, tmp_path: Path) -> None:
    from datamodules.sid_datamodule import SIDDataModule

    cache = tmp_path / "cache"
    args = ["--root", str(tree), "--cache-dir", str(cache), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    damaged = entries_dir(cache) / "Sony/long/00002_00_10s.dng.npy"
    sound = damaged.read_bytes()
    damaged.write_bytes(sound[:-1] + bytes([sound[-1] ^ 1]))
    assert main([*args, "--verify"]) == 0
    assert damaged.read_bytes() == sound

    damaged.write_bytes(sound[:-1] + bytes([sound[-1] ^ 1]))
    SIDDataModule(root=str(tree), cache_dir=str(cache), progress=False).prepare_data()
    assert damaged.read_bytes() != sound  # the default trusts sizes, as documented
    data = SIDDataModule(root=str(tree), cache_dir=str(cache), progress=False, verify_cache=True)
    data.prepare_data()
    assert damaged.read_bytes() == sound


def run_on_a_small_disk(disk: Path, size: str, code: str, *args: object) -> str:
    """Run ``code`` in a Python process that sees a tmpfs of ``size`` mounted at ``disk``, in
    a private user and mount namespace (no root needed, nothing left mounted); its stdout.

    A real full file system: the errors a full disk gives, with their errno, not a simulation.
    """
    unshare = shutil.which("unshare")
    disk.mkdir()
    if unshare is None or subprocess.run([unshare, "-rm", "true"],
                                         capture_output=True).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to make a small disk")
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk} && exec {sys.executable} -c "
              f"'{code}' " + " ".join(str(arg) for arg in args))
    proc = subprocess.run([unshare, "-rm", "sh", "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("dtype", ["uint16", "float16", "float32", ">u2"])
def test_cache_arrays_are_standard_npy_files(tmp_path: Path, dtype: str) -> None:
    from datamodules.cache import write_npy

    array = (np.arange(2 * 3 * 5 * 4) % 251).astype(dtype).reshape(2, 3, 5, 4)[:, ::2]
    with open(tmp_path / "ours.npy", "wb") as handle:
        write_npy(handle, array)
    np.save(tmp_path / "numpys.npy", array)
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "numpys.npy").read_bytes()
    loaded = np.load(tmp_path / "ours.npy", mmap_mode="r")
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)


WRITE_NPY_ON_A_FULL_DISK = """
import sys
import numpy as np
from darkraw.disk import is_disk_full
from datamodules.cache import write_npy
try:
    with open(sys.argv[1], "wb") as handle:
        write_npy(handle, np.zeros(2_000_000, np.uint8))
except OSError as error:
    print(is_disk_full(error), error.errno)
"""


def test_a_full_disk_while_writing_an_array_is_recognised_as_a_full_disk(tmp_path: Path) -> None:
    """np.save's fwrite reports a short write with no errno, which read as a broken file; the
    cache's own writer must keep ENOSPC, whatever the timing of the disk filling up."""
    disk = tmp_path / "small_disk"
    stdout = run_on_a_small_disk(disk, "1m", WRITE_NPY_ON_A_FULL_DISK, disk / "a.npy")
    assert stdout.split() == ["True", "28"]


FILL_DISK_DURING_BUILD = """
import json, os, sys, threading, time
from pathlib import Path
from datamodules.cache import build_cache
from darkraw.errors import DiskSpaceError

root, cache, filler = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
def fill_once_an_entry_exists():  # another process filling the disk while the cache is built
    while not list(cache.rglob("*.npy")):
        time.sleep(0.001)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(bytes(65536))
        except OSError:
            pass
threading.Thread(target=fill_once_an_entry_exists, daemon=True).start()
result = {}
try:
    build_cache(root, cache, "lists", workers=int(sys.argv[4]), progress=False)
except DiskSpaceError as error:
    result["error"] = str(error)
os.remove(filler)  # space freed: the same build completes the cache
index = build_cache(root, cache, "lists", workers=1, progress=False)
result["train_pairs"] = len(index.splits["train"])
print(json.dumps(result))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_disk_that_fills_up_during_the_build_is_named_and_the_build_completes_later(
        tree: Path, tmp_path: Path, workers: int) -> None:
    """A real full file system (a 2 MB tmpfs in a private mount namespace): one error naming
    the disk and what to do, not every remaining file listed as broken, nor a bare OSError."""
    disk = tmp_path / "small_disk"
    stdout = run_on_a_small_disk(disk, "2m", FILL_DISK_DURING_BUILD,
                                 tree, disk / "cache", disk / "filler", workers)
    result = json.loads(stdout.strip().splitlines()[-1])
    message = result["error"]
    assert message.startswith(f"the disk of {disk / 'cache'} filled up while writing ")
    assert "finished so far are complete and kept" in message
    assert "choose another --cache-dir (data.cache_dir)" in message
    assert "could not be cached" not in message and "Re-download" not in message
    assert result["train_pairs"] == 3


def test_other_settings_trigger_a_rebuild(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_cache(tree, cache, "lists", workers=1, progress=False)
    before = entry_files(cache)
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    manifest["fingerprint_hash"] = "0123456789abcdef"  # as written by another crop/format
    (cache / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="built with other settings"):
        open_cache(tree, cache, "lists")
    build_cache(tree, cache, "lists", workers=1, progress=False)
    after = entry_files(cache)
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in after)
    assert json.loads((cache / MANIFEST_NAME).read_text())["fingerprint_hash"] != "0123456789abcdef"


def test_broken_files_are_named_and_other_entries_kept(tmp_path: Path) -> None:
    """Two processes; one truncated file and one GRBG file fail, the other entries survive."""
    from datamodules.dng import write_bayer_dng

    root = write_sid_tree(tmp_path / "sid")
    good = (root / "Sony/short/00002_00_0.1s.dng").read_bytes()
    broken = root / "Sony/short/00002_00_0.1s.dng"
    broken.write_bytes(good[: len(good) // 2])
    grbg = root / "Sony/short/00003_00_0.1s.dng"
    write_bayer_dng(grbg, np.full((70, 100), 600, np.uint16), exposure_time=0.1,
                    cfa_pattern="GRBG")
    cache = tmp_path / "cache"
    with pytest.raises(CacheError) as info:
        build_cache(root, cache, "lists", workers=2, progress=False)
    message = str(info.value)
    assert "2 of 10 files could not be cached" in message and "8 entries are complete" in message
    assert "00002_00_0.1s.dng: RawReadError: cannot decode" in message
    assert "00003_00_0.1s.dng: RawReadError" in message and "GRBG" in message
    kept = entry_files(cache)
    assert len(kept) == 16

    broken.write_bytes(good)  # repaired; the GRBG file is still there
    with pytest.raises(CacheError, match=r"(?s)1 of 10 files .*00003_00_0\.1s\.dng"):
        build_cache(root, cache, "lists", workers=1, progress=False)
    after = entry_files(cache)
    assert {k: after[k] for k in kept} == kept and len(after) == 18


def test_disk_estimate_matches_what_is_written(tree: Path, tmp_path: Path) -> None:
    from datamodules.cache import _cache_files
    from datamodules.sid_lists import load_pairs

    files = _cache_files(load_pairs(tree, "lists"))
    work = _pending_work(tree, files)
    cache = tmp_path / "cache"
    build_cache(tree, cache, "lists", workers=1, progress=False)
    written = sum(p.stat().st_size for p in entries_dir(cache).rglob("*.npy"))
    assert work.largest_pixels == 70 * 100 and work.total_pixels == 10 * 70 * 100
    assert written <= work.bytes <= written + 4096 * len(files)


def test_command_line(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["--root", str(tree), "--cache-dir", str(cache), "--workers", "1", "--no-progress"]
    assert main([*args, "--pairs", "authors"]) == 0
    assert "cache ready" in capsys.readouterr().out
    assert main(["--root", str(tmp_path / "missing"), "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"darkraw: error: SID dataset root {tmp_path / 'missing'} does not")
    assert "--root for python -m datamodules.cache" in err  # the option of this command
    for workers in ("0", "-2"):  # passed silently on a complete cache
        with pytest.raises(SystemExit) as caught:
            main([*args[:4], "--workers", workers])
        assert caught.value.code == 2
        assert "give at least 1 decoding process" in capsys.readouterr().err


def test_worker_count() -> None:
    from datamodules.cache import PendingWork, _worker_count

    small = PendingWork(bytes=10**6, total_pixels=10**6, largest_pixels=10**5)
    big = PendingWork(bytes=10**10, total_pixels=4 * 10**9, largest_pixels=12 * 10**6)
    assert _worker_count(None, 10, small) == 1  # not worth starting processes
    assert _worker_count(2, 10, small) == 2  # an explicit request is honoured
    assert _worker_count(8, 3, small) == 3  # never more processes than files
    assert 1 <= _worker_count(None, 1000, big) <= (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match=r"cache_workers\) must be at least 1, got 0"):
        _worker_count(0, 10, small)


def _cache_command(tree: Path, cache: Path) -> subprocess.Popen[str]:
    """``python -m datamodules.cache`` in its own process, Ctrl-C-able (SIGINT not ignored)."""
    command = [sys.executable, "-m", "datamodules.cache", "--root", str(tree), "--cache-dir",
               str(cache), "--workers", "1", "--no-progress"]
    return popen_ctrl_c_able(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _interrupt_after_the_first_entry(process: subprocess.Popen[str], cache: Path) -> None:
    """SIGINT (like Ctrl-C) as soon as the build has written one complete entry."""
    deadline = time.monotonic() + 120
    while not (entries_dir(cache).exists() and any(entries_dir(cache).rglob("*.json"))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)


def test_ctrl_c_keeps_finished_entries_and_says_so(tmp_path: Path) -> None:
    tree = write_sid_tree(tmp_path / "sid", train=tuple(f"{i:05d}" for i in range(1, 13)),
                          height=256, width=384)
    cache = tmp_path / "cache"
    process = _cache_command(tree, cache)
    _interrupt_after_the_first_entry(process, cache)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    match = re.search(r"cache build interrupted: (\d+) of 28 pending entries were finished", err)
    assert match, err
    kept = len(list(entries_dir(cache).rglob("*.json")))
    assert 1 <= int(match.group(1)) == kept < 28  # one process: the count is exact

    process = _cache_command(tree, cache)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"caching {28 - kept} of 28 files" in err and "cache ready" in out
    assert len(open_cache(tree, cache, "lists").splits["train"]) == 12


def test_a_second_builder_says_whom_it_waits_for(tree: Path, tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / LOCK_NAME, "a+") as lock:  # this process is "the other builder"
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(json.dumps({"pid": os.getpid(), "host": "node7", "started": time.time()}))
        lock.flush()
        process = _cache_command(tree, cache)
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], 60)
        assert ready, "the waiting builder said nothing for 60 s"
        line = process.stderr.readline()
        assert "another process is building the darkraw cache" in line
        assert f"pid {os.getpid()} on node7" in line and str(cache / LOCK_NAME) in line
        time.sleep(0.5)
        assert process.poll() is None and not (cache / MANIFEST_NAME).exists()  # still waiting
    out, err = process.communicate(timeout=120)  # lock released: it builds
    assert process.returncode == 0, err
    assert "cache lock acquired" in err and "cache ready" in out
    holder = json.loads((cache / LOCK_NAME).read_text())
    assert holder["pid"] == process.pid


def test_ctrl_c_in_train_py_during_the_cache_build(tmp_path: Path) -> None:
    tree = write_sid_tree(tmp_path / "sid", train=tuple(f"{i:05d}" for i in range(1, 13)),
                          height=256, width=384)
    cache, run = tmp_path / "cache", tmp_path / "run"
    command = [sys.executable, "train.py", "data=sid", f"paths.sid_root={tree}",
               f"paths.sid_cache_dir={cache}", "data.cache_workers=1", "data.progress=false",
               f"hydra.run.dir={run}", "logger=csv"]
    process = popen_ctrl_c_able(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _interrupt_after_the_first_entry(process, cache)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "darkraw: interrupted (Ctrl-C) before training" in err
    assert re.search(r"cache build interrupted: \d+ of 28 pending entries", out + err)
    assert json.loads((run / "job_status.json").read_text())["status"] == "interrupted"

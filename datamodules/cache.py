"""The packed-patch cache: each raw file decoded once, then read patch by patch through mmap.

Why: decoding a Sony ARW per training step made the authors' training ~7x slower, and holding the
decoded set in RAM took more than 60 GB. The cache keeps uint16 arrays on disk (packed inputs, not
normalised, and 16-bit ground truths) that a DataLoader worker maps read-only, so each patch only
touches its own pages and worker memory does not grow with the data set.

Layout of ``cache_dir``::

    manifest.json                      settings fingerprint (written last)
    entries/<relpath>.npy              uint16 array: (4, H/2, W/2) short, (H, W, 3) long
    entries/<relpath>.json             metadata, written after the array: an entry counts only
                                       when its metadata exists and matches the array's size;
                                       it records the array's SHA-1 for ``--verify``

Usage: ``python -m datamodules.cache --root <SID root> --cache-dir <dir> [--pairs lists|authors]
[--workers N] [--verify]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import rawpy
from tqdm import tqdm

from darkraw.cli import at_least_one
from darkraw.disk import GB, ensure_free_space, free_gb, is_disk_full, replaced_when_complete
from darkraw.errors import ConfigError, DarkrawError, DataError, DiskSpaceError
from darkraw.lock_holder import describe_holder, read_holder, write_holder
from datamodules.amplification import (
    DEFAULT_M,
    MAX_AMPLIFICATION,
    MIN_AMPLIFICATION,
    amplification_from_sums,
    estimated_sums,
    exposure_ratio_amplification,
)
from datamodules.raw import (
    CROP_MULTIPLE,
    POSTPROCESS_PARAMS,
    cropped_shape,
    normalise,
    pack_bayer,
    read_raw,
    render_target,
)
from datamodules.sid_lists import SPLITS, SIDPair, Split, load_pairs, parse_sid_name

log = logging.getLogger(__name__)

#: Bump when the on-disk format or anything that changes the cached values changes.
CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENTRIES_DIR = "entries"
LOCK_NAME = ".build.lock"
_TMP_MARK = ".tmp-"
#: Peak memory of one decoding process: interpreter and libraries, plus per raw pixel LibRaw's
#: 4-channel buffer, the rendered output, the mosaic and its copies (measured ~16 B/px on a
#: 2848x4256 DNG; rounded up). Used to cap the number of processes on small machines.
_WORKER_BASE_BYTES = 100 * 2**20
_WORKER_BYTES_PER_PIXEL = 24
#: Below this many raw pixels to decode (~ten 12 Mpx Sony frames, a few seconds of work) an
#: automatic build stays in-process: starting worker processes would cost more than it saves.
_PARALLEL_MIN_PIXELS = 128 * 2**20
_HASH_BLOCK = 1 << 22

Kind = Literal["short", "long"]
AmplificationMode = Literal["exposure_ratio", "estimated"]
AMPLIFICATION_MODES: tuple[AmplificationMode, ...] = ("exposure_ratio", "estimated")


class CacheError(DataError):
    """The cache is missing, stale, or could not be (completely) built."""


def settings_fingerprint() -> dict[str, Any]:
    """Everything that changes the cached values: a cache built with other settings is rebuilt."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "crop": {"multiple": CROP_MULTIPLE, "anchor": "top-left"},
        "packed": "uint16 (4, H/2, W/2) R,G,G,B = pixel_unshuffle(RGGB mosaic, 2), not normalised",
        "target": "uint16 (H, W, 3) rawpy.postprocess",
        "postprocess": POSTPROCESS_PARAMS,
        "estimator": "sums of W and p*W, bins (logspace(0,8,128,2)-1)/255, "
        "weights logspace(0,5,127)/max reversed, half-open bins",
        "libraw": ".".join(str(v) for v in rawpy.libraw_version),
    }


def fingerprint_hash(fingerprint: dict[str, Any] | None = None) -> str:
    text = json.dumps(fingerprint or settings_fingerprint(), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- on-disk entries


@dataclass(frozen=True)
class CacheEntry:
    """One cached raw file. Holds paths and numbers only: never the pixels (workers stay small)."""

    relpath: str
    kind: Kind
    array_path: Path
    shape: tuple[int, ...]
    black_level: tuple[float, float, float, float]
    white_level: float
    exposure: float
    estimated_sums: tuple[float, float] | None

    def open(self) -> np.ndarray:
        """Read-only memory map: indexing a crop reads only that crop's pages from disk.

        Opening a cache checks sizes only (hashing ~80 GB takes minutes): an entry whose header
        a bad copy or sector damaged is found here, and named with the check that rebuilds it,
        not left to numpy's "Header info length ... is large" from inside a loader worker.
        """
        try:
            array = np.load(self.array_path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as error:
            raise CacheError(self._damaged(f"{type(error).__name__}: {error}")) from error
        if tuple(array.shape) != tuple(self.shape):
            raise CacheError(self._damaged(f"shape {tuple(array.shape)}, recorded "
                                           f"{tuple(self.shape)}"))
        return array

    def _damaged(self, reason: str) -> str:
        first = reason.strip().splitlines()[0] if reason.strip() else reason
        return (f"cache entry {self.array_path} (of {self.relpath}) is damaged ({first}): run "
                "`python -m datamodules.cache --root <data root> --cache-dir <cache folder> "
                "--verify` (or train with data.verify_cache=true), which finds and rebuilds "
                "damaged entries")


@dataclass(frozen=True)
class CachedPair:
    """A training/evaluation pair resolved to its two cache entries."""

    pair: SIDPair
    short: CacheEntry
    long: CacheEntry

    @property
    def name(self) -> str:
        return self.pair.name

    @property
    def scene(self) -> str:
        return self.pair.scene

    def amplification(
        self,
        mode: str,
        m: float = DEFAULT_M,
        max_ratio: float = MAX_AMPLIFICATION,
    ) -> float:
        """The pair's gain; the estimate uses the whole image's histogram, as at test time."""
        if mode == "exposure_ratio":
            return exposure_ratio_amplification(self.short.exposure, self.long.exposure, max_ratio)
        if mode == "estimated":
            if self.short.estimated_sums is None:
                raise CacheError(f"cache entry {self.short.relpath} has no estimator statistics")
            sum_w, sum_pw = self.short.estimated_sums
            return amplification_from_sums(sum_w, sum_pw, m, MIN_AMPLIFICATION, max_ratio)
        raise DataError(
            f"amplification={mode!r} is not an amplification mode; choose one of "
            f"{AMPLIFICATION_MODES}"
        )


@dataclass(frozen=True)
class CacheIndex:
    """An opened, validated cache: the pairs of every split with their entries."""

    root: Path
    cache_dir: Path
    pairs_source: str
    fingerprint: str
    splits: dict[Split, list[CachedPair]]

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self.splits.values())


def entries_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / ENTRIES_DIR


def _array_path(cache_dir: Path, relpath: str) -> Path:
    return entries_dir(cache_dir) / f"{relpath}.npy"


def _meta_path(cache_dir: Path, relpath: str) -> Path:
    return entries_dir(cache_dir) / f"{relpath}.json"


def _temp_name(final: Path) -> Path:
    host = socket.gethostname().replace("-", "_")
    return final.with_name(f".{final.name}{_TMP_MARK}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def _atomic_file(final: Path) -> Iterator[Any]:
    """An open temp file beside ``final``, on disk (fsync) before it is renamed into place: a
    power loss must not leave a renamed but empty entry that the manifest counts as built."""
    with replaced_when_complete(final, partial_name=_temp_name) as tmp, open(tmp, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_npy(handle: Any, array: np.ndarray) -> None:
    """Write ``array`` as a standard ``.npy`` file (``np.load`` and its memory map read it).

    Not ``np.save``: for a real file it writes through C ``fwrite``, whose short write on a full
    disk comes back as ``OSError('N requested and M written')`` with no errno, so a full disk
    read as one broken file after another. Python's own ``write`` keeps ``ENOSPC``/``EDQUOT``.
    """
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
    handle.write(array.reshape(-1).view(np.uint8).data)


def _write_json(final: Path, payload: dict[str, Any]) -> None:
    with _atomic_file(final) as handle:
        handle.write(json.dumps(payload, indent=1, sort_keys=True).encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_sha1(path: Path) -> str:
    """Full-content SHA-1: sound (no sampled bytes) and ~1 GB/s, small beside one decode."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _source_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# --------------------------------------------------------------------------- building one entry


def build_entry(root: str, relpath: str, kind: Kind, cache_dir: str, fingerprint: str) -> dict:
    """Decode one raw file into its cache entry (runs in a worker process).

    The array is renamed into place before the metadata, so a crash leaves at worst an array
    without metadata: not an entry, and rebuilt on the next run.
    """
    source = Path(root) / relpath
    cache = Path(cache_dir)
    before = _source_stamp(source)
    sha1 = file_sha1(source)
    name = parse_sid_name(source)
    meta: dict[str, Any] = {
        "fingerprint": fingerprint,
        "kind": kind,
        "relpath": relpath,
        "source": {**before, "sha1": sha1},
        "scene": name.scene,
        "shot": name.shot,
        "exposure": name.exposure,
    }
    if kind == "short":
        frame = read_raw(source)
        array = pack_bayer(frame.mosaic)
        meta["estimated_sums"] = list(
            estimated_sums(normalise(array, frame.black_level, frame.white_level))
        )
        meta["black_level"] = list(frame.black_level)
        meta["white_level"] = frame.white_level
        meta["visible_shape"] = list(frame.visible_shape)
        del frame
    else:
        array = render_target(source)
        meta["black_level"] = None
        meta["white_level"] = None
    if _source_stamp(source) != before:
        raise CacheError(f"{source} changed while it was being cached; run the build again")
    array_path = _array_path(cache, relpath)
    with _atomic_file(array_path) as handle:
        write_npy(handle, array)
    meta["array"] = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "bytes": array_path.stat().st_size,
        # Read back from the page cache just written: cheap beside the decode, and what
        # ``verify_cache`` compares against after a copy to another disk or a bad sector.
        "sha1": file_sha1(array_path),
    }
    _write_json(_meta_path(cache, relpath), meta)
    return meta


def _header_shape(path: Path) -> tuple[int, int] | None:
    """Visible size from the raw header only (no decoding), or None if unreadable."""
    raw = rawpy.RawPy()
    try:
        raw.open_file(str(path))
        return int(raw.sizes.height), int(raw.sizes.width)
    except (rawpy.LibRawError, OSError):
        return None
    finally:
        raw.close()


# --------------------------------------------------------------------------- validation


def _entry_valid(
    meta: dict[str, Any] | None,
    cache_dir: Path,
    root: Path,
    relpath: str,
    kind: Kind,
    fingerprint: str,
    rehash: bool,
) -> bool:
    """Whether an entry can be used as is.

    Size and mtime of the source match: trusted. Same size, other mtime (a copy, a ``touch``):
    the content hash decides, when ``rehash`` is allowed. Any doubt means rebuild.
    """
    if meta is None or meta.get("fingerprint") != fingerprint or meta.get("kind") != kind:
        return False
    array = _array_path(cache_dir, relpath)
    try:
        if array.stat().st_size != meta["array"]["bytes"]:
            return False
        stamp = _source_stamp(root / relpath)
        source = meta["source"]
    except (OSError, KeyError, TypeError):
        return False
    if stamp["size"] != source.get("size"):
        return False
    if stamp["mtime_ns"] == source.get("mtime_ns"):
        return True
    if not rehash or file_sha1(root / relpath) != source.get("sha1"):
        return False
    meta["source"] = {**source, **stamp}
    _write_json(_meta_path(cache_dir, relpath), meta)
    return True


def check_splits(splits: Sequence[str] | None) -> tuple[Split, ...]:
    """The splits to cache, in SPLITS order; None: all of them."""
    if splits is None:
        return SPLITS
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"splits={list(splits)} must name one or more of {list(SPLITS)}")
    return tuple(s for s in SPLITS if s in splits)


def _cache_files(pairs: dict[Split, list[SIDPair]],
                 splits: Sequence[Split] = SPLITS) -> dict[str, Kind]:
    files: dict[str, Kind] = {}
    for split in splits:
        for pair in pairs[split]:
            files[pair.short_relpath] = "short"
            files[pair.long_relpath] = "long"
    return files


def _load_entry(cache_dir: Path, relpath: str, meta: dict[str, Any]) -> CacheEntry:
    black = meta.get("black_level")
    white = meta.get("white_level")
    sums = meta.get("estimated_sums")
    return CacheEntry(
        relpath=relpath,
        kind=meta["kind"],
        array_path=_array_path(cache_dir, relpath),
        shape=tuple(int(s) for s in meta["array"]["shape"]),
        black_level=tuple(float(b) for b in black) if black is not None else (0.0,) * 4,
        white_level=float(white) if white is not None else 65535.0,
        exposure=float(meta["exposure"]),
        estimated_sums=(float(sums[0]), float(sums[1])) if sums is not None else None,
    )


def _manifest(cache_dir: Path) -> dict[str, Any] | None:
    return _read_json(Path(cache_dir) / MANIFEST_NAME)


def _build_command(root: Path, cache_dir: Path, pairs: str,
                   splits: Sequence[Split] = SPLITS) -> str:
    command = f"python -m datamodules.cache --root {root} --cache-dir {cache_dir} --pairs {pairs}"
    return command if tuple(splits) == SPLITS else f"{command} --splits {' '.join(splits)}"


def open_cache(root: str | Path, cache_dir: str | Path, pairs: str = "lists",
               splits: Sequence[str] | None = None) -> CacheIndex:
    """Open a built cache without building anything (what every DDP rank does in ``setup``).

    ``splits`` (default: all) are the splits opened and checked; the index holds only those, so
    that an evaluation of the test split needs no training entries in the cache.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    wanted = check_splits(splits)
    split_pairs = load_pairs(root, pairs)
    fingerprint = fingerprint_hash()
    how = f"build it first: {_build_command(root, cache_dir, pairs, wanted)}"
    manifest = _manifest(cache_dir)
    if manifest is None:
        raise CacheError(f"no darkraw cache in {cache_dir} ({MANIFEST_NAME} missing); {how}")
    if manifest.get("fingerprint_hash") != fingerprint:
        raise CacheError(
            f"the cache in {cache_dir} was built with other settings (fingerprint "
            f"{manifest.get('fingerprint_hash')}, current {fingerprint}); rebuild it: "
            f"{_build_command(root, cache_dir, pairs, wanted)}"
        )
    entries: dict[str, CacheEntry] = {}
    for relpath, kind in _cache_files(split_pairs, wanted).items():
        meta = _read_json(_meta_path(cache_dir, relpath))
        if not _entry_valid(meta, cache_dir, root, relpath, kind, fingerprint, rehash=False):
            raise CacheError(
                f"cache entry for {root / relpath} is missing or out of date in {cache_dir}; {how}"
            )
        assert meta is not None
        entries[relpath] = _load_entry(cache_dir, relpath, meta)
    index_splits: dict[Split, list[CachedPair]] = {}
    for split in wanted:
        index_splits[split] = []
        for pair in split_pairs[split]:
            short, long = entries[pair.short_relpath], entries[pair.long_relpath]
            _, h, w = short.shape
            if tuple(long.shape) != (2 * h, 2 * w, 3):
                raise DataError(
                    f"{pair.short} (mosaic {2 * h}x{2 * w} after cropping) and its ground truth "
                    f"{pair.long} ({long.shape[0]}x{long.shape[1]}) differ in size; a pair must "
                    "come from the same camera at the same resolution"
                )
            index_splits[split].append(CachedPair(pair=pair, short=short, long=long))
    return CacheIndex(root=root, cache_dir=cache_dir, pairs_source=pairs,
                      fingerprint=fingerprint, splits=index_splits)


# --------------------------------------------------------------------------- building the cache


class CacheBuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during a build, with what was kept; still a KeyboardInterrupt for its callers."""


class _DiskFilledUp(Exception):
    """A write of the build failed on a full disk: stop, rather than fail every other file."""

    def __init__(self, relpath: str, error: OSError) -> None:
        super().__init__(relpath)
        self.relpath, self.error = relpath, error


def _disk_full_error(cache_dir: Path, what: str) -> DiskSpaceError:
    return DiskSpaceError(
        f"the disk of {cache_dir} filled up while writing {what} ({free_gb(cache_dir):.2f} GB "
        "free now; another process may be writing to it): the entries finished so far are "
        "complete and kept; free some space or choose another --cache-dir (data.cache_dir), "
        "then run the same command: only the missing entries are built"
    )


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """Serialise concurrent builders (e.g. sweep jobs sharing a cache); best effort on NFS.

    A builder that has to wait says so, and for whom: a silent wait on a lock held by another
    job (or a stuck one on another node) looks exactly like a hang.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        yield
        return
    path = cache_dir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole build
    try:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning(
                    "another process is building the darkraw cache in %s (%s); waiting for it "
                    "to finish (its entries are reused). If no such process is alive, delete %s.",
                    cache_dir, describe_holder(read_holder(handle)), path,
                )
                waited = time.monotonic()
                fcntl.flock(handle, fcntl.LOCK_EX)
                log.info("cache lock acquired after %.0f s", time.monotonic() - waited)
            write_holder(handle)
        except OSError:
            log.warning("could not lock %s; building without a lock", path)
        yield
    finally:
        handle.close()


def _remove_stale_temps(cache_dir: Path, max_age_s: float = 86400.0) -> int:
    """Delete temp files of dead builders (this host, pid gone) or older than a day."""
    host = socket.gethostname().replace("-", "_")
    removed = 0
    folder = entries_dir(cache_dir)
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(f"*{_TMP_MARK}*"):
        tag = tmp.name.rsplit(_TMP_MARK, 1)[-1].split("-")
        dead = len(tag) == 3 and tag[0] == host and not psutil.pid_exists(int(tag[1] or -1))
        try:
            old = time.time() - tmp.stat().st_mtime > max_age_s
        except OSError:
            continue
        if dead or old:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def _reset_if_other_settings(cache_dir: Path, fingerprint: str) -> None:
    manifest = _manifest(cache_dir)
    if manifest is None or manifest.get("fingerprint_hash") == fingerprint:
        return
    if not manifest.get("darkraw_cache"):
        raise CacheError(
            f"{cache_dir / MANIFEST_NAME} exists but is not a darkraw cache manifest; "
            "choose another --cache-dir (darkraw would overwrite that folder's entries)"
        )
    log.warning(
        "cache %s was built with other settings (%s, now %s): rebuilding it",
        cache_dir,
        manifest.get("fingerprint_hash"),
        fingerprint,
    )
    (cache_dir / MANIFEST_NAME).unlink()
    shutil.rmtree(entries_dir(cache_dir), ignore_errors=True)


def _write_manifest(cache_dir: Path, fingerprint: str, relpaths: list[str]) -> None:
    old = _manifest(cache_dir) or {}
    known = set(old.get("entries", [])) if old.get("fingerprint_hash") == fingerprint else set()
    known.update(relpaths)
    _write_json(
        cache_dir / MANIFEST_NAME,
        {
            "darkraw_cache": True,
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint_hash": fingerprint,
            "fingerprint": settings_fingerprint(),
            "entries": sorted(r for r in known if _meta_path(cache_dir, r).is_file()),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


@dataclass(frozen=True)
class PendingWork:
    """Size of what is left to build, from raw headers only (no decoding)."""

    bytes: int
    total_pixels: int
    largest_pixels: int


def _pending_work(root: Path, pending: dict[str, Kind]) -> PendingWork:
    """Unreadable headers count as the largest readable file: their decode error comes later,
    with the file named, and the estimate stays on the safe side."""
    pixels: dict[str, int] = {}
    cropped: dict[str, int] = {}
    for relpath in pending:
        shape = _header_shape(root / relpath) or (0, 0)
        pixels[relpath] = shape[0] * shape[1]
        crop = cropped_shape(*shape)
        cropped[relpath] = crop[0] * crop[1]
    largest = max(pixels.values(), default=0)
    largest_cropped = max(cropped.values(), default=0)
    total = 0
    for relpath, kind in pending.items():
        count = cropped[relpath] or largest_cropped
        total += count * (2 if kind == "short" else 6) + 4096
    return PendingWork(
        bytes=total,
        total_pixels=sum(p or largest for p in pixels.values()),
        largest_pixels=largest,
    )


def _worker_count(requested: int | None, n_pending: int, work: PendingWork) -> int:
    """Processes to decode with: all cores by default, fewer if RAM is short.

    With ``requested=None`` a small build runs in this process: each spawned worker re-imports
    the caller's main module (train.py pulls in torch and Lightning), which costs more than
    decoding a few dozen small files.
    """
    if requested is not None and requested < 1:
        raise ConfigError(f"--workers (data.cache_workers) must be at least 1, got {requested}")
    if requested is None and work.total_pixels < _PARALLEL_MIN_PIXELS:
        return 1
    workers = min(requested or os.cpu_count() or 1, n_pending)
    if work.largest_pixels:
        per_worker = _WORKER_BASE_BYTES + work.largest_pixels * _WORKER_BYTES_PER_PIXEL
        fits = max(1, int(psutil.virtual_memory().available * 0.8 // per_worker))
        if fits < workers:
            log.warning(
                "using %d decoding processes instead of %d: each needs ~%.1f GB of RAM",
                fits,
                workers,
                per_worker / GB,
            )
            workers = fits
    return max(1, workers)


@contextlib.contextmanager
def _threads_per_process(workers: int) -> Iterator[None]:
    """Share the cores between LibRaw's OpenMP threads and the processes (read at spawn time)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokenProcessPool):
        return (
            "the decoding process died (killed, or out of memory: try fewer --workers; from a "
            "script, call build_cache under `if __name__ == '__main__':`)"
        )
    return f"{type(exc).__name__}: {exc}"


def _written_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _run_jobs(
    jobs: list[tuple[str, str, Kind, str, str]],
    workers: int,
    progress: bool,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Decode every job; failures are collected, never abort the other files.

    Worker processes are spawned, not forked: the parent may hold CUDA or OpenMP thread pools
    (torch, LibRaw) that a forked child would inherit in a broken state.
    """
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    started_ns = time.time_ns()
    bar = tqdm(total=len(jobs), desc="darkraw cache", unit="file", disable=not progress)

    def record(relpath: str, call: Callable[[], object]) -> None:
        try:
            call()
            done.append(relpath)
        except Exception as exc:  # one bad file must not lose the others...
            if is_disk_full(exc):  # ...but a full disk would fail them all, each as "broken"
                raise _DiskFilledUp(relpath, exc) from exc
            failed.append((relpath, _describe(exc)))
        bar.update(1)

    try:
        if workers == 1:
            for job in jobs:
                record(job[1], lambda job=job: build_entry(*job))
        else:
            context = multiprocessing.get_context("spawn")
            with (
                _threads_per_process(workers),
                ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
            ):
                futures: dict[Future, str] = {
                    pool.submit(build_entry, *job): job[1] for job in jobs
                }
                try:
                    for future in as_completed(futures):
                        record(futures[future], future.result)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    except KeyboardInterrupt as interrupt:
        # Entries are written atomically (array, then metadata), so the finished ones are valid
        # and the rest are rebuilt by the next build; say so instead of a bare traceback.
        # Counted on disk: Ctrl-C can land after an entry's metadata is written and before
        # ``record`` counts it.
        finished = set(done) | {relpath for _, relpath, _, cache_dir, _ in jobs
                                if _written_since(_meta_path(Path(cache_dir), relpath), started_ns)}
        message = (f"cache build interrupted: {len(finished)} of {len(jobs)} pending entries "
                   "were finished and are kept (with any a worker completed meanwhile); the same "
                   "command builds the rest")
        log.warning(message)
        raise CacheBuildInterrupted(message) from interrupt
    finally:
        bar.close()
    return done, failed


def _open_read_only(root: Path, cache_dir: Path, pairs: str, splits: Sequence[str] | None,
                    verify: bool) -> CacheIndex:
    """A complete cache in a folder this process cannot write (a shared, read-only dataset
    mount) is used as it is; the build lock alone made it unusable, as an OSError traceback."""
    what = "data.cache_dir, or --cache-dir"
    if verify:
        raise CacheError(f"the cache folder {cache_dir} ({what}) is read-only: --verify (or "
                         "data.verify_cache=true) would have to rebuild damaged entries there; "
                         "verify it where it can be written, or copy it to a writable folder")
    try:
        index = open_cache(root, cache_dir, pairs, splits)
    except CacheError as error:
        raise CacheError(f"the cache folder {cache_dir} ({what}) is read-only and cannot be "
                         f"completed here ({error}): build it once where it can be written, or "
                         "point the cache at a writable folder") from error
    log.info("using the complete read-only cache in %s", cache_dir)
    return index


def make_cache_dir(cache_dir: Path) -> None:
    """Create the cache folder, or say in one line why it cannot be (mkdir's FileExistsError
    for a file of that name, or a read-only place, came as a traceback)."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DataError(f"the cache folder {cache_dir} (data.cache_dir, or --cache-dir) is a "
                        "file, not a folder: point it at a folder (created if missing)")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if is_disk_full(error):
            raise
        raise DataError(f"cannot create the cache folder {cache_dir} (data.cache_dir, or "
                        f"--cache-dir): {error.strerror or error}; point it at a folder you "
                        "can write to") from error


def build_cache(
    root: str | Path,
    cache_dir: str | Path,
    pairs: str = "lists",
    workers: int | None = None,
    progress: bool = True,
    verify: bool = False,
    splits: Sequence[str] | None = None,
) -> CacheIndex:
    """Bring the cache up to date for ``pairs`` and open it.

    Valid entries are kept (also across pair sources: ``lists`` and ``authors`` share files);
    missing, half-written or stale ones are (re)built in parallel. If some files fail, the others
    are still finished and kept, and the error lists every failure.

    ``verify`` also re-reads every kept entry against the checksum recorded when it was written
    and rebuilds those that differ: sizes and dates cannot see a cache that was damaged in a
    copy to node-local scratch or by a failing disk, and its values would train silently.

    ``splits`` (default: all) limits the work to those splits: ``eval.py split=test`` on a fresh
    cache decodes the test pairs only, not the ~20 GB of training entries it would not read.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    wanted = check_splits(splits)
    split_pairs = load_pairs(root, pairs)
    files = _cache_files(split_pairs, wanted)
    fingerprint = fingerprint_hash()
    make_cache_dir(cache_dir)
    if not os.access(cache_dir, os.W_OK):
        return _open_read_only(root, cache_dir, pairs, splits, verify)
    with _build_lock(cache_dir):
        _reset_if_other_settings(cache_dir, fingerprint)
        _remove_stale_temps(cache_dir)
        pending: dict[str, Kind] = {}
        for relpath, kind in files.items():
            meta = _read_json(_meta_path(cache_dir, relpath))
            if not _entry_valid(meta, cache_dir, root, relpath, kind, fingerprint, rehash=True):
                pending[relpath] = kind
        if verify:
            kept = [r for r in files if r not in pending]
            for relpath in verify_entries(cache_dir, kept, progress).rebuild:
                pending[relpath] = files[relpath]
        failed: list[tuple[str, str]] = []
        if pending:
            work = _pending_work(root, pending)
            needed = work.bytes
            ensure_free_space(cache_dir, needed * 1.02, f"{len(pending)} darkraw cache entries")
            n_workers = _worker_count(workers, len(pending), work)
            log.info(
                "caching %d of %d files into %s with %d processes (%.2f GB)",
                len(pending),
                len(files),
                cache_dir,
                n_workers,
                needed / GB,
            )
            jobs = [(str(root), r, k, str(cache_dir), fingerprint) for r, k in pending.items()]
            try:
                _, failed = _run_jobs(jobs, n_workers, progress)
            except _DiskFilledUp as full:
                raise _disk_full_error(cache_dir,
                                       f"the entry of {root / full.relpath}") from full.error
        try:
            _write_manifest(cache_dir, fingerprint, sorted(files))
        except OSError as error:
            if is_disk_full(error):
                raise _disk_full_error(cache_dir, MANIFEST_NAME) from error
            raise
    if failed:
        shown = "\n".join(f"  {root / relpath}: {message}" for relpath, message in failed[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise CacheError(
            f"{len(failed)} of {len(files)} files could not be cached into {cache_dir} (the other "
            f"{len(files) - len(failed)} entries are complete and kept):\n{shown}{more}\n"
            "Re-download or remove the broken files (and their list lines), then run again; "
            "only the missing entries are built."
        )
    return open_cache(root, cache_dir, pairs, wanted)


# --------------------------------------------------------------------------- verifying contents


@dataclass(frozen=True)
class VerifyResult:
    """What a content check found; ``rebuild`` lists the entries it invalidated."""

    checked: int
    checked_bytes: int
    corrupt: tuple[str, ...]
    unrecorded: tuple[str, ...]
    seconds: float

    @property
    def rebuild(self) -> tuple[str, ...]:
        return self.corrupt + self.unrecorded


def _recorded_sha1(cache_dir: Path, relpath: str) -> str | None:
    meta = _read_json(_meta_path(cache_dir, relpath)) or {}
    array = meta.get("array")
    sha1 = array.get("sha1") if isinstance(array, dict) else None
    return sha1 if isinstance(sha1, str) else None


def _invalidate(cache_dir: Path, relpath: str) -> None:
    """Drop the metadata first: from then on the entry does not count, even if we are killed."""
    with contextlib.suppress(FileNotFoundError):
        _meta_path(cache_dir, relpath).unlink()


def verify_entries(cache_dir: Path, relpaths: list[str], progress: bool = True) -> VerifyResult:
    """Hash every entry's array and invalidate those whose content differs from their record.

    Entries written before darkraw recorded checksums cannot be checked; an explicit
    verification invalidates them too (they are rebuilt once, with a checksum), since keeping
    them would report them as sound without having looked. Hashing runs on threads: hashlib
    and file reads release the GIL, so this goes at disk speed rather than one core's.
    """
    start = time.perf_counter()
    recorded = {r: _recorded_sha1(cache_dir, r) for r in relpaths}
    unrecorded = tuple(sorted(r for r, sha1 in recorded.items() if sha1 is None))
    to_hash = [r for r, sha1 in recorded.items() if sha1 is not None]
    sizes = {r: _array_path(cache_dir, r).stat().st_size for r in to_hash}
    corrupt: list[str] = []
    bar = tqdm(total=sum(sizes.values()), desc="darkraw cache check", unit="B",
               unit_scale=True, disable=not progress)

    def check(relpath: str) -> bool:
        return file_sha1(_array_path(cache_dir, relpath)) == recorded[relpath]

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for relpath, sound in zip(to_hash, pool.map(check, to_hash), strict=True):
                if not sound:
                    corrupt.append(relpath)
                bar.update(sizes[relpath])
    finally:
        bar.close()
    for relpath in corrupt:
        log.warning("cache entry %s does not match its checksum (damaged); rebuilding it",
                    _array_path(cache_dir, relpath))
    if unrecorded:
        log.warning(
            "%d cache entries in %s have no checksum (written by an older darkraw) and cannot "
            "be verified; rebuilding them once, with one", len(unrecorded), cache_dir,
        )
    for relpath in (*corrupt, *unrecorded):
        _invalidate(cache_dir, relpath)
    result = VerifyResult(
        checked=len(to_hash),
        checked_bytes=sum(sizes.values()),
        corrupt=tuple(sorted(corrupt)),
        unrecorded=unrecorded,
        seconds=time.perf_counter() - start,
    )
    log.info(
        "verified %d cache entries (%.2f GB) in %.1f s: %d damaged, %d without a checksum",
        result.checked, result.checked_bytes / GB, result.seconds, len(result.corrupt),
        len(result.unrecorded),
    )
    return result


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.cache",
        description="Decode SID raw files once into darkraw's packed uint16 cache.",
    )
    parser.add_argument("--root", required=True, help="SID root (holds Sony/ and the list files)")
    parser.add_argument("--cache-dir", required=True, help="where the cache is written")
    parser.add_argument("--pairs", default="lists", choices=["lists", "authors"])
    parser.add_argument(
        "--workers",
        # At parse time: checked only when there was work to do, --workers 0 passed a full cache.
        type=at_least_one("decoding process"),
        default=None,
        help="decoding processes (default: all cores, fewer if RAM is short; small builds run "
        "in this process)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also re-read every built entry against its recorded checksum and rebuild damaged "
        "ones (after copying a cache to another disk, or when a disk reports errors)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=list(SPLITS),
        default=None,
        help="cache only these splits (default: all), e.g. --splits test before an evaluation",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        index = build_cache(
            args.root,
            args.cache_dir,
            args.pairs,
            args.workers,
            progress=not args.no_progress,
            verify=args.verify,
            splits=args.splits,
        )
    except DarkrawError as exc:
        print(f"darkraw: error: {exc}", file=sys.stderr)
        return 1
    except CacheBuildInterrupted:  # what was kept is already logged
        return 130  # 128 + SIGINT, as a shell reports Ctrl-C
    except KeyboardInterrupt:
        print("\ncache build interrupted; entries already written are kept and the same "
              "command completes the cache", file=sys.stderr)
        return 130
    counts = ", ".join(f"{split} {len(pairs)}" for split, pairs in index.splits.items())
    print(
        f"cache ready in {index.cache_dir} ({args.pairs} pairs: {counts}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

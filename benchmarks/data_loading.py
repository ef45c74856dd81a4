"""Training-patch throughput from the mmap cache vs decoding raw files per patch, and loader RAM.

Why: the authors decoded everything into RAM (>60 GB) because decoding per step made training
~7x slower. This measures both sides of that trade-off for darkraw's cache on a synthetic
SID-style set (real DNG files) and writes benchmarks/results/data_loading.{json,md}.

    python benchmarks/data_loading.py [--root DIR] [--height 1024 --width 1536] [--scenes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, default_collate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.amplification import exposure_ratio_amplification  # noqa: E402
from datamodules.cache import CachedPair, build_cache, verify_entries  # noqa: E402
from datamodules.raw import normalise, pack_bayer, read_raw, render_target  # noqa: E402
from datamodules.sid_datamodule import SIDDataset  # noqa: E402


def decode_patch(pair: CachedPair, patch: int, rng: np.random.Generator) -> dict[str, Any]:
    """What training without a cache does: decode both raw files for every patch."""
    frame = read_raw(pair.pair.short)
    packed = pack_bayer(frame.mosaic)
    target = render_target(pair.pair.long)
    p = patch // 2
    y = int(rng.integers(0, packed.shape[1] - p + 1))
    x = int(rng.integers(0, packed.shape[2] - p + 1))
    gain = exposure_ratio_amplification(pair.short.exposure, pair.long.exposure)
    data = normalise(packed[:, y : y + p, x : x + p], frame.black_level, frame.white_level) * gain
    rgb = target[2 * y : 2 * y + patch, 2 * x : 2 * x + patch].transpose(2, 0, 1) / 65535.0
    return {"input": torch.from_numpy(data), "target": torch.from_numpy(rgb.astype(np.float32))}


def evict_from_page_cache(paths: list[Path]) -> bool:
    """Drop the files' pages from the OS page cache (no root needed) for a cold-read figure."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def patches_per_second(make, count: int) -> float:
    make(0)  # warm-up: imports, first page faults
    start = time.perf_counter()
    for i in range(count):
        make(i)
    return count / (time.perf_counter() - start)


def collate_with_rss(batch: list[dict]) -> dict:
    out = default_collate(batch)
    out["rss"] = psutil.Process().memory_info().rss
    return out


def loader_memory(dataset: SIDDataset, workers: int, batch_size: int) -> dict[str, float]:
    """Peak RSS of the loader's worker processes and of the main process over one pass."""
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_with_rss
    )
    main = psutil.Process()
    worker_rss: list[int] = []
    main_peak = main.memory_info().rss
    start = time.perf_counter()
    batches = 0
    for batch in loader:
        worker_rss.append(int(batch["rss"]))
        main_peak = max(main_peak, main.memory_info().rss)
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "workers": workers,
        "batches": batches,
        "worker_rss_first_mb": worker_rss[0] / 2**20,
        "worker_rss_peak_mb": max(worker_rss) / 2**20,
        "worker_rss_growth_mb": (max(worker_rss) - worker_rss[0]) / 2**20,
        "main_rss_peak_mb": main_peak / 2**20,
        "patches_per_s": batches * batch_size / elapsed,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.root:
        return measure(args, Path(args.root))
    with tempfile.TemporaryDirectory(prefix="darkraw_bench_") as workdir:
        return measure(args, Path(workdir))


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from datamodules.synthetic import generate_synthetic_sid

    root = workdir / "synthetic_sid"
    start = time.perf_counter()
    generate_synthetic_sid(
        root, num_train_scenes=args.scenes, num_val_scenes=1, num_test_scenes=1,
        height=args.height, width=args.width, shots_per_scene=1, seed=0, progress=False,
    )
    generate_s = time.perf_counter() - start
    print(f"generated {root} in {generate_s:.1f} s", flush=True)
    cache_dir = workdir / "cache"
    start = time.perf_counter()
    index = build_cache(root, cache_dir, "lists", workers=args.cache_workers, progress=False)
    build_s = time.perf_counter() - start
    pairs = index.splits["train"]
    # Sizes and rates over every split's entries, as built and as verified below (the training
    # pairs alone gave a cache size smaller than the verified one, and understated files/s).
    all_entries = {e.array_path: e for s in index.splits.values() for p in s
                   for e in (p.short, p.long)}
    all_arrays = sorted(all_entries)
    cache_bytes = sum(path.stat().st_size for path in all_arrays)
    raw_bytes = sum(source.stat().st_size for source in
                    {f for s in index.splits.values() for p in s
                     for f in (p.pair.short, p.pair.long)})
    relpaths = [a.relative_to(cache_dir / "entries").as_posix()[: -len(".npy")]
                for a in all_arrays]
    evicted = evict_from_page_cache(all_arrays)
    verified = verify_entries(cache_dir, relpaths, progress=False)
    assert not verified.rebuild, "a freshly built cache failed its own check"

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = SIDDataset(
        pairs, train=True, patch_size=args.patch_size, amplification="exposure_ratio",
        length=args.patches,
    )
    arrays = [p.short.array_path for p in pairs] + [p.long.array_path for p in pairs]
    cold = None
    if evict_from_page_cache(arrays):
        start = time.perf_counter()
        for i in range(args.cold_patches):
            dataset[i]
        cold = args.cold_patches / (time.perf_counter() - start)
    cached = patches_per_second(lambda i: dataset[i], args.patches)
    rng = np.random.default_rng(0)
    decoded = patches_per_second(
        lambda i: decode_patch(pairs[i % len(pairs)], args.patch_size, rng), args.decode_patches
    )
    memory = loader_memory(dataset, args.loader_workers, args.batch_size)
    return {
        "setup": {
            "height": args.height, "width": args.width, "train_pairs": len(pairs),
            "patch_size": args.patch_size, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "page_cache": "warm unless stated (cold: posix_fadvise DONTNEED on the cache files)",
        },
        "generate_s": generate_s,
        "cache_build_s": build_s,
        "cache_build_files_per_s": len(all_arrays) / build_s,
        "cache_files": len(all_arrays),
        "cache_total_mb": verified.checked_bytes / 2**20,
        "verify_s": verified.seconds,
        "verify_cold": evicted,
        "verify_mb_per_s": verified.checked_bytes / 2**20 / verified.seconds,
        "verify_vs_build": build_s / verified.seconds,
        "cache_mb": cache_bytes / 2**20,
        "raw_mb": raw_bytes / 2**20,
        "cached_patches_per_s": cached,
        "cached_cold_patches_per_s": cold,
        "decode_per_patch_patches_per_s": decoded,
        "speedup": cached / decoded,
        "loader": memory,
    }


def markdown(result: dict[str, Any]) -> str:
    s, m = result["setup"], result["loader"]
    rows = [
        ("images", f"{s['train_pairs']} training pairs of {s['height']}x{s['width']} (DNG)"),
        ("patch", f"{s['patch_size']}x{s['patch_size']} full-res (packed /2)"),
        ("cache build", f"{result['cache_build_s']:.1f} s "
                        f"({result['cache_build_files_per_s']:.1f} files/s)"),
        ("cache size", f"{result['cache_mb']:.1f} MB (raw files {result['raw_mb']:.1f} MB)"),
        ("content check (`--verify`, "
         f"{'cache files evicted first' if result['verify_cold'] else 'warm page cache'})",
         f"{result['verify_s']:.2f} s for {result['cache_total_mb']:.0f} MB "
         f"({result['verify_mb_per_s']:.0f} MB/s), {result['verify_vs_build']:.0f}x faster "
         "than building"),
        ("patches/s from the cache (1 process, warm page cache)",
         f"{result['cached_patches_per_s']:.1f}"),
        ("patches/s from the cache (1 process, cache files evicted first)",
         "n/a" if result["cached_cold_patches_per_s"] is None
         else f"{result['cached_cold_patches_per_s']:.1f}"),
        ("patches/s decoding raw per patch (1 process)",
         f"{result['decode_per_patch_patches_per_s']:.2f}"),
        ("speed-up", f"{result['speedup']:.0f}x"),
        (f"loader, {m['workers']} workers: patches/s", f"{m['patches_per_s']:.1f}"),
        ("worker RSS first / peak / growth",
         f"{m['worker_rss_first_mb']:.0f} / {m['worker_rss_peak_mb']:.0f} / "
         f"{m['worker_rss_growth_mb']:.1f} MB"),
        ("main process peak RSS", f"{m['main_rss_peak_mb']:.0f} MB"),
    ]
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    note = (
        f"\nMachine: {s['cpu_count']} CPU cores, Python {s['python']}; page cache "
        f"{s['page_cache']}.\n"
    )
    return "# Data loading benchmark\n\n" + "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--scenes", type=int, default=8, help="training scenes")
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--patches", type=int, default=400, help="patches timed from the cache")
    parser.add_argument("--cold-patches", type=int, default=32, help="patches after eviction")
    parser.add_argument("--decode-patches", type=int, default=16, help="patches timed decoding")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--cache-workers", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                        help="folder for data_loading.json/.md (default: benchmarks/results/, "
                             "the figures BENCHMARKS.md cites; give another for trial runs)")
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_loading.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "data_loading.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Full-image evaluation of a checkpoint: per-image PSNR/SSIM in two conventions.

Papers on SID report the mean over images of each image's PSNR; the authors computed it on
images quantised to uint8. Both are written, since 0.1-0.3 dB differences between the
conventions are as large as many ablation effects.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from darkraw.restoration import run_padded, write_image
from lightning_modules.module import naive_rgb


@dataclass
class ImageScore:
    name: str
    amplification: float
    psnr: float
    ssim: float
    psnr_uint8: float
    ssim_uint8: float
    psnr_input: float


#: Data settings that decide how bright the network's input is, by amplification mode: the ones
#: an evaluation must share with training to score the network as it was trained.
AMPLIFICATION_SETTINGS = {"estimated": ("amplification", "m"),
                          "exposure_ratio": ("amplification", "max_ratio")}


def training_data_mismatches(ckpt: str | Path, data_cfg: Mapping[str, Any]) -> list[str]:
    """The amplification settings of ``data_cfg`` that differ from those the checkpoint was
    trained with (Lightning stores the data module's settings in train.py's checkpoints).

    eval.py builds its data from its own config: a model trained with exposure-ratio
    amplification would otherwise be scored on estimated-amplifier inputs without a word.
    """
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    trained = checkpoint.get("datamodule_hyper_parameters") or {}
    keys = AMPLIFICATION_SETTINGS.get(trained.get("amplification"), ())
    return [f"data.{key}={data_cfg[key]!r} (trained with {trained[key]!r})"
            for key in keys if key in trained and key in data_cfg and trained[key] != data_cfg[key]]


def quantise_uint8(image: torch.Tensor) -> torch.Tensor:
    """The authors' convention: round to 8-bit levels, then score on the 0-255 scale."""
    return (image.clamp(0, 1) * 255).round()


def score_image(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, ...]:
    """PSNR and SSIM of one 1 x 3 x H x W pair, in float [0, 1] and in uint8 levels."""
    p, t = prediction.float().clamp(0, 1), target.float()
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0)
    ssim = structural_similarity_index_measure(p, t, data_range=1.0)
    p8, t8 = quantise_uint8(p), quantise_uint8(t)
    psnr8 = peak_signal_noise_ratio(p8, t8, data_range=255.0)
    ssim8 = structural_similarity_index_measure(p8, t8, data_range=255.0)
    return tuple(float(v) for v in (psnr, ssim, psnr8, ssim8))


@torch.inference_mode()
def evaluate(net: nn.Module, loader: Any, device: torch.device, image_dir: Path | None,
             max_images: int | None = None) -> list[ImageScore]:
    from rich.progress import track

    scores: list[ImageScore] = []
    total = len(loader) if max_images is None else min(len(loader), max_images)
    for i, batch in enumerate(track(loader, total=total, description="evaluating")):
        if max_images is not None and i >= max_images:
            break
        x = batch["input"].to(device)
        target = batch["target"].to(device)
        prediction = run_padded(net, x).float()
        for j in range(x.shape[0]):
            name = str(batch["name"][j])
            psnr, ssim, psnr8, ssim8 = score_image(prediction[j:j + 1], target[j:j + 1])
            baseline = peak_signal_noise_ratio(naive_rgb(x[j:j + 1].float()), target[j:j + 1],
                                               data_range=1.0)
            scores.append(ImageScore(name, float(batch["amplification"][j]), psnr, ssim, psnr8,
                                     ssim8, float(baseline)))
            if image_dir is not None:
                # Names carry the exposure ("00001_00_0.1s"): keep all of it, not Path.stem.
                write_image(prediction[j], image_dir / f"{name.replace('/', '_')}.png")
    return scores


def summarise_scores(scores: list[ImageScore]) -> dict[str, float]:
    summary: dict[str, float] = {"images": float(len(scores))}
    for key in ("psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_input"):
        values = [getattr(s, key) for s in scores if math.isfinite(getattr(s, key))]
        summary[f"mean_{key}"] = statistics.fmean(values) if values else math.nan
        summary[f"std_{key}"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    return summary


def write_reports(scores: list[ImageScore], summary: dict[str, float], output: Path,
                  meta: dict[str, Any]) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    per_image = output / "per_image.csv"
    with per_image.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(scores[0]).keys()))
        writer.writeheader()
        writer.writerows(asdict(s) for s in scores)
    summary_json = output / "summary.json"
    summary_json.write_text(json.dumps({**meta, **summary}, indent=2))
    summary_md = output / "summary.md"
    lines = [f"# Evaluation of `{meta.get('ckpt')}` on the {meta.get('split')} split", "",
             "| metric | float [0,1] | uint8 (authors) |", "|---|---|---|",
             f"| PSNR (dB) | {summary['mean_psnr']:.3f} | {summary['mean_psnr_uint8']:.3f} |",
             f"| SSIM | {summary['mean_ssim']:.4f} | {summary['mean_ssim_uint8']:.4f} |", "",
             f"Images: {int(summary['images'])}. Amplified-input baseline: "
             f"{summary['mean_psnr_input']:.3f} dB. Mean over images of each image's value."]
    summary_md.write_text("\n".join(lines) + "\n")
    return {"per_image": per_image, "summary_json": summary_json, "summary_md": summary_md}

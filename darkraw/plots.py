"""Learning curves as PNG from the plain-file metrics every run leaves (csv/metrics.csv)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Series = dict[str, list[tuple[int, float]]]


def read_metrics(metrics_csv: str | Path) -> tuple[Series, dict[str, int]]:
    """``({metric: [(step, value)]}, {metric: non-finite count})`` from a CSVLogger file.

    A resumed run appends to the same file and re-logs the steps after its checkpoint: the value
    written last for a step wins. NaN/inf values are counted, not plotted.
    """
    by_step: dict[str, dict[int, float]] = {}
    nonfinite: dict[str, int] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, text in row.items():
                if key in ("step", "epoch", None) or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    by_step.setdefault(key, {})[int(float(step))] = value
                else:
                    nonfinite[key] = nonfinite.get(key, 0) + 1
    return {k: sorted(v.items()) for k, v in by_step.items()}, nonfinite


def smooth(values: Iterable[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average, as dashboards show noisy training losses."""
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_learning_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    series, _ = read_metrics(metrics_csv)
    fig, (ax_loss, ax_psnr, ax_ssim) = plt.subplots(1, 3, figsize=(15, 4))
    if "train/loss" in series:
        steps, values = zip(*series["train/loss"], strict=True)
        ax_loss.plot(steps, values, alpha=0.3, color="C0")
        ax_loss.plot(steps, smooth(values), color="C0", label="train loss (EMA)")
    if "val/loss" in series:
        ax_loss.plot(*zip(*series["val/loss"], strict=True), "o-", color="C1", label="val loss")
    ax_loss.set(xlabel="step", ylabel="L1 + w (1 - MS-SSIM)", title="loss")
    for key, style, label in (("val/psnr", "o-", "network"),
                              ("val/psnr_input", "--", "amplified input (baseline)")):
        if key in series:
            ax_psnr.plot(*zip(*series[key], strict=True), style, label=label)
    ax_psnr.set(xlabel="step", ylabel="dB", title="validation PSNR")
    if "val/ssim" in series:
        ax_ssim.plot(*zip(*series["val/ssim"], strict=True), "o-", color="C2")
    ax_ssim.set(xlabel="step", ylabel="SSIM", title="validation SSIM")
    for ax in (ax_loss, ax_psnr, ax_ssim):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

"""Both amplifiers; the estimator against a plain loop over pixels and bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.amplification import (
    amplification_from_sums,
    estimated_amplification,
    estimated_sums,
    exposure_ratio_amplification,
    histogram_bins,
)


def loop_estimate(values: np.ndarray, m: float) -> float:
    """The formula of training.md, written as directly as possible."""
    edges = (np.logspace(0, 8, 128, base=2) - 1) / 255
    weights = np.logspace(0, 5, 127)
    weights = weights / weights.max()
    weights = weights[::-1]
    sum_w = sum_pw = 0.0
    for p in values.ravel().tolist():
        for i in range(127):
            if edges[i] <= p < edges[i + 1]:
                sum_w += weights[i]
                sum_pw += p * weights[i]
                break
    a = m * 0.01 * sum_w / sum_pw
    return min(max(a, 1.0), 300.0)


def test_exposure_ratio() -> None:
    assert exposure_ratio_amplification(0.1, 10) == pytest.approx(100)
    assert exposure_ratio_amplification(0.04, 10) == pytest.approx(250)
    assert exposure_ratio_amplification(0.033, 10) == 300  # 303 clamped
    assert exposure_ratio_amplification(0.033, 10, max_ratio=1000) == pytest.approx(10 / 0.033)
    with pytest.raises(ValueError, match="positive"):
        exposure_ratio_amplification(0.0, 10)


def test_bins_and_weights() -> None:
    edges, table = histogram_bins()
    assert edges.shape == (128,) and edges[0] == 0 and edges[-1] == pytest.approx(1.0)
    assert np.all(np.diff(edges) > 0)
    weights = table[1:-1]
    assert weights.shape == (127,)
    assert weights[0] == pytest.approx(1.0) and weights[-1] == pytest.approx(1e-5)
    assert table[0] == 0 and table[-1] == 0


@pytest.mark.parametrize("m", [1.0, 5.0, 8.0])
def test_estimate_matches_loop(m: float) -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((4, 6, 8)) ** 3 * 0.2).astype(np.float32)
    x[0, 0, :3] = [0.0, 1.0, 1.5]  # a bin edge, the excluded top edge, above range
    assert estimated_amplification(x, m=m) == pytest.approx(loop_estimate(x, m), rel=1e-9)
    assert estimated_amplification(torch.from_numpy(x), m=m) == pytest.approx(
        loop_estimate(x, m), rel=1e-9
    )


def test_estimate_whole_image_in_chunks() -> None:
    """More values than one chunk: same sums as one vectorised pass over the histogram."""
    rng = np.random.default_rng(0)
    x = (rng.random(1_500_000) ** 4 * 0.05).astype(np.float32)
    edges, table = histogram_bins()
    index = np.digitize(x, edges)  # right=False: edges[i-1] <= x < edges[i]
    w = table[index]
    sum_w, sum_pw = estimated_sums(x.reshape(4, 375, 1000))
    assert sum_w == pytest.approx(w.sum(), rel=1e-9)
    assert sum_pw == pytest.approx((x.astype(np.float64) * w).sum(), rel=1e-9)


def test_estimate_scales_with_brightness_and_clamps() -> None:
    dark = np.full((4, 8, 8), 0.002, np.float32)
    brighter = dark * 4
    assert estimated_amplification(dark) > estimated_amplification(brighter)
    assert estimated_amplification(np.zeros((4, 8, 8), np.float32)) == 300
    assert estimated_amplification(np.full((4, 8, 8), 0.9, np.float32)) == 1
    assert estimated_amplification(np.ones((4, 8, 8), np.float32)) == 1  # saturated: no bin
    assert amplification_from_sums(1.0, 1e-9, m=5, max_amplification=50) == 50
    with pytest.raises(ValueError, match="m must be positive"):
        amplification_from_sums(1.0, 1.0, m=0)

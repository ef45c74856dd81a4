"""How much a dark input is brightened before the network sees it.

Two modes: SID's ratio of exposure times (needs the ground truth's metadata, so only usable in
experiments) and the paper's histogram-based estimate, which looks at the input alone and is what
a deployed model would use.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is optional here: cache-building processes never import it
    import torch

#: Defaults of the paper's estimator (mirrored by conf/data/*.yaml).
DEFAULT_M = 5.0
#: Values per step when summing a whole image, so a 12 M-pixel Sony frame needs ~30 MB, not 300.
_CHUNK = 1 << 20
MIN_AMPLIFICATION = 1.0
MAX_AMPLIFICATION = 300.0


def exposure_ratio_amplification(
    short_exposure: float, long_exposure: float, max_ratio: float = MAX_AMPLIFICATION
) -> float:
    """SID's "GT amplification": ``min(long / short, max_ratio)``."""
    if not (short_exposure > 0 and long_exposure > 0):
        raise ValueError(
            f"exposure times must be positive, got short={short_exposure} s, long={long_exposure} s"
        )
    if max_ratio <= 0:
        raise ValueError(f"max_ratio must be positive, got {max_ratio}")
    return float(min(long_exposure / short_exposure, max_ratio))


@lru_cache(maxsize=1)
def histogram_bins() -> tuple[np.ndarray, np.ndarray]:
    """The paper's 127 log-spaced bins over [0, 1] and their weights (darkest bin weighs 1).

    Returns the 128 edges and a 129-entry weight table padded with 0 at both ends, so that
    ``np.searchsorted(edges, p, side="right")`` indexes it directly: values below 0 and at or above
    the last edge (1.0) fall in no bin and weigh 0, as in the authors' half-open binning.
    """
    edges = (np.logspace(0.0, 8.0, 128, base=2.0) - 1.0) / 255.0
    weights = np.logspace(0.0, 5.0, 127, base=10.0)
    weights = (weights / weights.max())[::-1]
    table = np.concatenate([[0.0], weights, [0.0]])
    edges.setflags(write=False)
    table.setflags(write=False)
    return edges, table


def pixel_weights(values: np.ndarray) -> np.ndarray:
    """W(p): the weight of the histogram bin of each value (0 outside [0, 1))."""
    edges, table = histogram_bins()
    return table[np.searchsorted(edges, values, side="right")]


def estimated_sums(packed_normalised: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """``(sum(W), sum(p * W))`` over a whole image: all the estimator needs to know about it.

    Kept separate from the final formula so the cache can store two numbers per file and any
    brightness knob ``m`` can be applied later without decoding the file again.
    """
    if hasattr(packed_normalised, "detach"):
        packed_normalised = packed_normalised.detach().cpu().numpy()
    values = np.asarray(packed_normalised).reshape(-1)
    sum_w = sum_pw = 0.0
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        weights = pixel_weights(chunk)
        sum_w += float(np.sum(weights, dtype=np.float64))
        sum_pw += float(np.dot(chunk.astype(np.float64), weights))
    return sum_w, sum_pw


def amplification_from_sums(
    sum_w: float,
    sum_pw: float,
    m: float = DEFAULT_M,
    min_amplification: float = MIN_AMPLIFICATION,
    max_amplification: float = MAX_AMPLIFICATION,
) -> float:
    """``m * 0.01 * sum(W) / sum(p W)`` clamped; an all-black image gets the maximum."""
    if m <= 0:
        raise ValueError(f"the brightness knob m must be positive, got {m}")
    if not 0 < min_amplification <= max_amplification:
        raise ValueError(
            f"need 0 < min_amplification <= max_amplification, got {min_amplification}, "
            f"{max_amplification}"
        )
    if sum_pw <= 0.0:
        # No signal in any bin: black (sum_w > 0) gets the most gain, a fully saturated image
        # (no pixel below 1, sum_w == 0) needs none.
        return float(max_amplification if sum_w > 0 else min_amplification)
    a = m * 0.01 * sum_w / sum_pw
    if not math.isfinite(a):
        return float(max_amplification)
    return float(min(max(a, min_amplification), max_amplification))


def estimated_amplification(
    packed_normalised: np.ndarray | torch.Tensor,
    m: float = DEFAULT_M,
    min_amplification: float = MIN_AMPLIFICATION,
    max_amplification: float = MAX_AMPLIFICATION,
) -> float:
    """The paper's amplifier, from the normalised (not yet amplified) input alone."""
    sum_w, sum_pw = estimated_sums(packed_normalised)
    return amplification_from_sums(sum_w, sum_pw, m, min_amplification, max_amplification)

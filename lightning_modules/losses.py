"""The training loss ``L1 + w * (1 - MS-SSIM)`` of the paper.

MS-SSIM comes from pytorch-msssim (about 3x faster than torchmetrics' in forward+backward on CPU,
same values). Both terms are computed in float32 even under bf16/fp16 autocast: MS-SSIM divides
small variances and multiplies five scales, which underflows or overflows in half precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import nn

MS_SSIM_SCALES = 5


def ms_ssim_min_side(win_size: int) -> int:
    """Every one of the 5 scales must still hold a full window after 4 halvings."""
    return (win_size - 1) * 2 ** (MS_SSIM_SCALES - 1)


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    l1: torch.Tensor
    ms_ssim: torch.Tensor


class L1MSSSIMLoss(nn.Module):
    """``L1 + ms_ssim_weight * (1 - MS-SSIM)`` with data range 1, 11-tap window, sigma 1.5."""

    def __init__(self, ms_ssim_weight: float = 0.2, win_size: int = 11,
                 win_sigma: float = 1.5) -> None:
        super().__init__()
        if ms_ssim_weight < 0:
            raise ValueError(f"loss.ms_ssim_weight must be >= 0, got {ms_ssim_weight}")
        self.ms_ssim_weight = ms_ssim_weight
        self.win_size = win_size
        self.win_sigma = win_sigma
        self.min_side = ms_ssim_min_side(win_size)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> LossParts:
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        if min(prediction.shape[-2:]) <= self.min_side:
            raise ValueError(
                f"MS-SSIM (5 scales, {self.win_size}-tap window) needs images larger than "
                f"{self.min_side} px on the short side, got {tuple(prediction.shape[-2:])}; "
                f"raise data.patch_size (full-resolution pixels)"
            )
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            p, t = prediction.float(), target.float()
            l1 = F.l1_loss(p, t)
            similarity = ms_ssim(p, t, data_range=1.0, size_average=True,
                                 win_size=self.win_size, win_sigma=self.win_sigma)
            total = l1 + self.ms_ssim_weight * (1.0 - similarity)
        return LossParts(total=total, l1=l1, ms_ssim=similarity)

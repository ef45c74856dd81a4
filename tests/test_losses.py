from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses import L1MSSSIMLoss
from lightning_modules.network import DarkRestorationNet


def _images(n: int = 2, size: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.rand(n, 3, size, size)
    noisy = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    return noisy, target


def test_loss_is_zero_for_identical_images() -> None:
    _, target = _images()
    parts = L1MSSSIMLoss()(target, target.clone())
    assert parts.total.item() == pytest.approx(0.0, abs=1e-6)
    assert parts.l1.item() == 0.0
    assert parts.ms_ssim.item() == pytest.approx(1.0, abs=1e-6)


def test_loss_combines_l1_and_ms_ssim_with_the_configured_weight() -> None:
    noisy, target = _images()
    for weight in (0.0, 0.2, 1.0):
        parts = L1MSSSIMLoss(ms_ssim_weight=weight)(noisy, target)
        expected = parts.l1 + weight * (1 - parts.ms_ssim)
        assert parts.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0 < parts.ms_ssim.item() < 1


def test_loss_is_differentiable() -> None:
    noisy, target = _images()
    noisy.requires_grad_(True)
    L1MSSSIMLoss()(noisy, target).total.backward()
    assert noisy.grad is not None and torch.isfinite(noisy.grad).all()
    assert noisy.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_under_autocast_matches_float32(dtype: torch.dtype) -> None:
    noisy, target = _images()
    reference = L1MSSSIMLoss()(noisy, target).total
    with torch.autocast(device_type="cpu", dtype=dtype):
        half_pred = noisy.to(dtype)
        parts = L1MSSSIMLoss()(half_pred, target.to(dtype))
    assert parts.total.dtype == torch.float32
    assert torch.isfinite(parts.total)
    assert parts.total.item() == pytest.approx(reference.item(), abs=5e-3)


def test_too_small_images_fail_clearly() -> None:
    x = torch.rand(1, 3, 128, 256)
    with pytest.raises(ValueError, match="larger than 160 px"):
        L1MSSSIMLoss()(x, x)


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="ms_ssim_weight"):
        L1MSSSIMLoss(ms_ssim_weight=-1)


def test_loss_falls_when_the_network_overfits_one_batch() -> None:
    """A real optimisation: 40 Adam steps of the real network on one fixed batch."""
    torch.manual_seed(0)
    net = DarkRestorationNet()
    criterion = L1MSSSIMLoss()
    # A smooth colour image and its RGGB mosaic, as the amplified input would show it.
    target = F.interpolate(torch.rand(2, 3, 6, 6), size=(192, 192), mode="bilinear",
                           align_corners=False) * 0.8 + 0.1
    mosaic = torch.stack([target[:, 0, 0::2, 0::2], target[:, 1, 0::2, 1::2],
                          target[:, 1, 1::2, 0::2], target[:, 2, 1::2, 1::2]], dim=1)
    packed = mosaic * 0.5
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = criterion(net(packed), target).total
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses

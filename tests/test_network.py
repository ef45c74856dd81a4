from __future__ import annotations

import copy

import pytest
import torch

from lightning_modules.network import DarkRestorationNet, count_parameters, interleave_channels
from tests.helpers import perturbed_net

PAPER_PARAMETERS = 784_768


@pytest.mark.parametrize("rdb", ["before", "after"])
def test_parameter_count_matches_the_paper(rdb: str) -> None:
    net = DarkRestorationNet(rdb=rdb)
    assert count_parameters(net) == PAPER_PARAMETERS
    assert all(p.requires_grad for p in net.parameters())


def test_every_conv_is_weight_normalised() -> None:
    net = DarkRestorationNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 27  # 54 weight_g/weight_v tensors in the reference checkpoint
    for conv in convs:
        assert hasattr(conv, "parametrizations") and "weight" in conv.parametrizations
        g = conv.parametrizations.weight.original0
        assert g.shape == (conv.out_channels, 1, 1, 1)


@pytest.mark.parametrize("packed_hw", [(16, 16), (32, 48), (64, 96), (80, 32)])
def test_output_shape_and_range(packed_hw: tuple[int, int]) -> None:
    h, w = packed_hw
    net = DarkRestorationNet().eval()
    x = torch.rand(2, 4, h, w) * 50  # amplified inputs go well above 1
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 2 * h, 2 * w)
    assert y.min() >= 0 and y.max() <= 1
    assert y.std() > 0


@pytest.mark.parametrize("shape", [(1, 4, 24, 32), (1, 4, 32, 40), (1, 4, 8, 8)])
def test_sizes_not_multiple_of_16_are_rejected_clearly(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        DarkRestorationNet()(torch.rand(shape))


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_wrong_channel_count_is_rejected_clearly(channels: int) -> None:
    with pytest.raises(ValueError, match=f"4 packed Bayer channels.*got {channels} channels"):
        DarkRestorationNet()(torch.rand(1, channels, 32, 32))


def test_not_a_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="B x 4 x h x w"):
        DarkRestorationNet()(torch.rand(4, 32, 32))


def test_unknown_rdb_variant_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"model.rdb must be one of \['before', 'after'\]"):
        DarkRestorationNet(rdb="sideways")


def test_rdb_variants_share_parameters_but_not_outputs() -> None:
    before = DarkRestorationNet(rdb="before").eval()
    after = DarkRestorationNet(rdb="after").eval()
    after.load_state_dict(before.state_dict())  # same names, same shapes
    x = torch.rand(1, 4, 32, 32) * 20
    with torch.no_grad():
        diff = (before.high(x) - after.high(x)).abs().max()
    assert diff > 1e-3


def test_variants_differ_only_in_activation_placement() -> None:
    before = DarkRestorationNet(rdb="before")
    after = DarkRestorationNet(rdb="after")
    names_before = [n for n, _ in before.named_parameters()]
    names_after = [n for n, _ in after.named_parameters()]
    assert names_before == names_after
    first = before.high.rdb2.layers
    assert isinstance(first[0].act, torch.nn.Identity)  # RDB*: layer 0 has no activation
    assert first[1].act.negative_slope == pytest.approx(0.2)
    assert first[-1].act.negative_slope == pytest.approx(1.0)
    assert all(layer.act_first for layer in first)
    assert not any(layer.act_first for layer in after.high.rdb2.layers)


def test_gradients_reach_every_parameter() -> None:
    net = DarkRestorationNet()
    x = torch.rand(1, 4, 32, 32) * 0.5
    net(x).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def spec_channel_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The spec's words: view cat[a, b] as B x 2 x C x H x W, swap the two channel axes."""
    x = torch.cat([a, b], dim=1)
    batch, channels, height, width = x.shape
    return x.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("channels_last", [False, True])
def test_interleave_is_the_spec_channel_shuffle_in_either_layout(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.randn(2, 6, 5, 7).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(2, 6, 5, 7).contiguous(memory_format=fmt).requires_grad_()
    out = interleave_channels(a, b)
    assert torch.equal(out, spec_channel_shuffle(a, b))
    assert out.is_contiguous(memory_format=fmt)  # no layout change for the next conv to undo
    assert torch.equal(out[:, 0::2], a) and torch.equal(out[:, 1::2], b)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (a, b))
    expected = torch.autograd.grad((spec_channel_shuffle(a, b) * weights).sum(), (a, b))
    assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))
    with pytest.raises(ValueError, match="equal shapes"):
        interleave_channels(a, b[:, :3])


@pytest.mark.parametrize("rdb", ["before", "after"])
def test_in_place_activations_change_neither_outputs_nor_gradients(rdb: str) -> None:
    """Activations that overwrite their conv's output must never overwrite a tensor that
    autograd or a later dense layer still reads (that would raise, or silently differ)."""
    net = perturbed_net(rdb).train()
    reference = copy.deepcopy(net)
    in_place = [m for m in reference.modules() if getattr(m, "inplace", False)]
    assert len(in_place) >= 2  # the medium encoder and fuse block 1 at least
    for module in in_place:
        module.inplace = False
    x = torch.rand(2, 4, 32, 32) * 4
    y, y_ref = net(x), reference(x)
    assert torch.equal(y, y_ref)
    y.square().mean().backward()
    y_ref.square().mean().backward()
    grads = dict(reference.named_parameters())
    for name, param in net.named_parameters():
        assert torch.allclose(param.grad, grads[name].grad, rtol=1e-5, atol=1e-7), name

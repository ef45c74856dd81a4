from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_modules.inference import (
    DeployedRestorationNet,
    InferenceNet,
    conv_of_concatenation,
    fold_weight_norm,
    has_weight_norm,
    load_inference_net,
    prepare_for_inference,
    resolve_dtype,
)
from lightning_modules.network import count_parameters
from tests.helpers import perturbed_net

CUDA = torch.cuda.is_available()



def packed(batch: int = 1, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand(batch, 4, h, w) * 4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


@pytest.mark.parametrize("rdb", ["before", "after"])
def test_folded_equals_unfolded(rdb: str) -> None:
    net = perturbed_net(rdb)
    folded = fold_weight_norm(net)
    x = packed(2, 64, 48)
    with torch.no_grad():
        reference, y = net(x), folded(x)
    assert 0 < y.mean() < 1  # not all clamped: the comparison means something
    assert max_diff(y, reference) < 1e-5


def test_folded_convs_are_plain_conv2d_with_plain_keys() -> None:
    net = perturbed_net()
    folded = fold_weight_norm(net)
    assert not has_weight_norm(folded)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and all(type(m) is nn.Conv2d for m in convs)
    assert not any("parametrizations" in k for k in folded.state_dict())
    # The magnitudes g (one per output channel) are gone, everything else stays a parameter.
    assert count_parameters(folded) == count_parameters(net) - sum(m.out_channels for m in convs)
    assert all(p.is_leaf for p in folded.parameters())


def test_a_frozen_net_folds_to_frozen_parameters_not_buffers() -> None:
    net = perturbed_net().requires_grad_(False)
    folded = fold_weight_norm(net)
    assert not list(folded.buffers())
    assert count_parameters(folded) == 783_432
    assert not any(p.requires_grad for p in folded.parameters())


def test_folding_leaves_the_original_trainable() -> None:
    # deepcopy shares the parametrized class; removing the property there broke the original.
    net = perturbed_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold_weight_norm(net)
    assert has_weight_norm(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.train()
    net(packed(1, 32, 32)).mean().backward()
    assert net.high.squeeze.parametrizations.weight.original0.grad is not None


def test_legacy_weight_norm_is_folded_too() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        conv = torch.nn.utils.weight_norm(nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        conv.weight_g.mul_(1.7)
    folded = fold_weight_norm(conv)
    assert not has_weight_norm(folded) and set(folded.state_dict()) == {"weight", "bias"}
    x = torch.randn(1, 4, 8, 8)
    assert max_diff(folded(x), conv(x)) < 1e-6


@pytest.mark.parametrize("rdb", ["before", "after"])
def test_prepared_net_matches_in_both_layouts(rdb: str) -> None:
    net = perturbed_net(rdb)
    x = packed(1, 64, 64)
    with torch.no_grad():
        reference = net(x)
    nchw = prepare_for_inference(net, channels_last=False)
    assert isinstance(nchw.net, DeployedRestorationNet)
    # The deployed decoder sums fuse2's two input halves separately: a few float32 ulps of its
    # pre-clamp values (about 20 on this net), the fold itself is exact to 1e-5 (test above).
    assert max_diff(nchw(x), reference) < 3e-5
    # Channels-last convs sum in another order: float32 rounding differs, not the function.
    nhwc = prepare_for_inference(net, channels_last=True)
    assert nhwc.net.low.weight.is_contiguous(memory_format=torch.channels_last)
    assert max_diff(nhwc(x), reference) < 1e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_of_concatenation_is_the_conv_of_the_concatenation(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(24, 12, 5, padding=2).to(memory_format=fmt).requires_grad_(False)
    a = (torch.randn(2, 12, 20, 28) * 3).contiguous(memory_format=fmt)
    b = torch.rand(2, 12, 20, 28).contiguous(memory_format=fmt)
    whole = conv(torch.cat([a, b], dim=1))
    split = conv_of_concatenation(conv, a, b)
    # Against float64: the split is as exact as the one conv. A float32 sum of 600 products
    # rounds to a few 1e-6 of their magnitude, in an order that depends on the conv algorithm
    # oneDNN picks for the machine's load; a wrong split is off by O(1) (the check below).
    exact = conv.double()(torch.cat([a, b], dim=1).double())
    conv.float()
    scale = float(exact.abs().max())
    assert max_diff(whole.double(), exact) < 1e-5 * scale
    assert max_diff(split.double(), exact) < 1e-5 * scale
    # Swapped halves give another function: the split follows the weight's channel order.
    assert max_diff(conv_of_concatenation(conv, b, a), whole) > 0.1
    with pytest.raises(ValueError, match="ungrouped"):
        conv_of_concatenation(nn.Conv2d(24, 12, 3, groups=2), a, b)


def test_only_a_folded_network_can_be_deployed() -> None:
    net = perturbed_net()
    with pytest.raises(TypeError, match="fold_weight_norm"):
        DeployedRestorationNet.from_folded(net)  # still weight-normalised
    deployed = DeployedRestorationNet.from_folded(fold_weight_norm(net))
    assert set(deployed.state_dict()) == set(fold_weight_norm(net).state_dict())
    assert type(net) is not DeployedRestorationNet  # the original keeps its own class


def test_prepared_net_runs_without_autograd_and_keeps_input_dtype() -> None:
    inference = prepare_for_inference(perturbed_net())
    y = inference(packed(1, 32, 32))
    assert y.is_inference() and not y.requires_grad and y.dtype == torch.float32
    assert not any(p.requires_grad for p in inference.parameters())
    assert y.shape == (1, 3, 64, 64)


def test_input_checks_still_apply() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        prepare_for_inference(perturbed_net())(packed(1, 24, 32))


def test_concurrent_encoders_fall_back_to_sequential_on_cpu() -> None:
    net = perturbed_net()
    x = packed(1, 48, 64)
    sequential = prepare_for_inference(net, concurrent_encoders=False, channels_last=False)
    for mode in (True, "auto"):
        concurrent = prepare_for_inference(net, concurrent_encoders=mode, channels_last=False)
        assert not concurrent.uses_streams(x)
        assert torch.equal(concurrent(x), sequential(x))


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="concurrent_encoders='yes'"):
        prepare_for_inference(perturbed_net(), concurrent_encoders="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dtype='int8'.*bf16"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype(torch.float64)
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is None


def test_half_precision_casts_in_and_out() -> None:
    net = perturbed_net()
    x = packed(1, 32, 32)
    inference = prepare_for_inference(net, dtype="bf16", channels_last=False)
    assert inference.net.low.weight.dtype == torch.bfloat16
    y = inference(x)
    assert y.dtype == torch.float32
    with torch.no_grad():
        assert max_diff(y, net(x)) < 0.1  # bf16 keeps 8 bits of mantissa


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_in_place_keeps_state_dict_keys() -> None:
    net = perturbed_net()
    expected = {f"net.{k}" for k in fold_weight_norm(net).state_dict()}
    # torch.compile is lazy: nothing is compiled until the first call, so this is cheap.
    compiled = prepare_for_inference(net, compile={"dynamic": False})
    assert set(compiled.state_dict()) == expected
    # On a CPU the sequential path runs net.forward, so that is what must be compiled.
    assert compiled.net._compiled_call_impl is not None


def test_load_inference_net_from_a_lightning_checkpoint(tmp_path: Path) -> None:
    from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint

    net = perturbed_net()
    ckpt = save_checkpoint(lightning_checkpoint(net), tmp_path / "net.ckpt")
    inference = load_inference_net(ckpt, channels_last=False)
    assert isinstance(inference, InferenceNet)
    x = packed(1, 32, 48)
    # The same weights through the same deployed form: the very same numbers.
    assert torch.equal(inference(x), prepare_for_inference(net, channels_last=False)(x))


@pytest.mark.skipif(not CUDA, reason="CUDA streams need a GPU")
@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_cuda_streams_match_sequential(dtype: str | None) -> None:
    net = perturbed_net()
    concurrent = prepare_for_inference(net, device="cuda", dtype=dtype, concurrent_encoders=True)
    sequential = prepare_for_inference(net, device="cuda", dtype=dtype, concurrent_encoders=False)
    for shape in [(1, 4, 64, 64), (2, 4, 128, 96), (1, 4, 64, 64)]:
        x = torch.rand(shape, device="cuda") * 4
        assert concurrent.uses_streams(x)
        y = concurrent(x)
        del x  # freed while side streams may still run: record_stream must keep it alive
        torch.cuda.synchronize()
        x = torch.rand(shape, device="cuda") * 4
        assert max_diff(concurrent(x), sequential(x)) < (1e-5 if dtype is None else 2e-2)
        assert torch.isfinite(y).all()

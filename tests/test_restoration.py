from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from darkraw.errors import ConfigError
from darkraw.restoration import (
    amplification_for,
    blend_ramp,
    check_amplification,
    check_image_format,
    check_m_values,
    check_tiling,
    gains_and_labels,
    pad_to_multiple,
    run_padded,
    run_tiled,
    tile_starts,
)
from lightning_modules.network import DarkRestorationNet


def local_net() -> nn.Module:
    """A per-pixel network: tiling must reproduce its whole-image output exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 12, 1), nn.PixelShuffle(2)).eval()


def test_tile_starts_cover_the_image_with_the_overlap() -> None:
    assert tile_starts(100, 64, 16) == [0, 36]
    assert tile_starts(64, 64, 16) == [0]
    starts = tile_starts(300, 64, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(b - a <= 64 - 16 for a, b in itertools.pairwise(starts))


def test_blend_ramp_fades_only_on_shared_sides() -> None:
    w = blend_ramp(10, 4, fade_in=True, fade_out=False)
    assert w[0] < w[1] < w[2] < w[3] < 1 and torch.all(w[4:] == 1)
    assert torch.all(blend_ramp(10, 4, False, False) == 1)


@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (20, 3)])
def test_padding_reaches_a_multiple_of_16_and_output_is_cropped_back(hw: tuple[int, int]) -> None:
    x = torch.rand(1, 4, *hw)
    assert all(s % 16 == 0 for s in pad_to_multiple(x).shape[-2:])
    net = DarkRestorationNet().eval()
    with torch.no_grad():
        y = run_padded(net, x)
    assert y.shape == (1, 3, 2 * hw[0], 2 * hw[1])


def test_tiles_blend_to_the_whole_image_result_for_a_local_network() -> None:
    x = torch.rand(1, 4, 100, 140)
    net = local_net()
    with torch.no_grad():
        whole = run_padded(net, x)
        tiled = run_tiled(net, x, tile=48, overlap=16)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_tiles_of_the_real_network_stay_close_to_the_whole_image() -> None:
    """Its deepest encoder sees the whole tile, so seams shrink as tiles and overlaps grow."""
    x = torch.rand(1, 4, 192, 320) * 4
    net = DarkRestorationNet().eval()
    with torch.no_grad():
        whole = run_padded(net, x)
        small = run_tiled(net, x, tile=64, overlap=16)
        large = run_tiled(net, x, tile=160, overlap=64)
    assert large.shape == whole.shape
    assert large.min() >= 0 and large.max() <= 1
    assert (large - whole).abs().mean() < 0.5 * (small - whole).abs().mean()


@pytest.mark.parametrize(("tile", "overlap"), [(50, 8), (64, 32), (64, -1)])
def test_bad_tile_settings_fail_clearly(tile: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="tile_"):
        run_tiled(local_net(), torch.rand(1, 4, 200, 200), tile, overlap)


def test_a_fixed_amplification_gives_one_output_named_by_the_gain_whatever_m() -> None:
    packed = np.full((4, 8, 8), 0.02, np.float32)
    assert gains_and_labels(packed, 100, [1.0, 5.0]) == [(100.0, "x100")]
    assert gains_and_labels(packed, 2.5, [5.0]) == [(2.5, "x2p5")]


def test_the_estimated_amplification_gives_one_output_per_m() -> None:
    packed = np.random.default_rng(0).uniform(0.001, 0.02, (4, 16, 16)).astype(np.float32)
    outputs = gains_and_labels(packed, "estimated", [1.0, 2.5])
    assert [label for _, label in outputs] == ["m1", "m2p5"]
    assert [gain for gain, _ in outputs] == [amplification_for(packed, "estimated", m)
                                             for m in (1.0, 2.5)]
    assert outputs[0][0] < outputs[1][0]


@pytest.mark.parametrize(("check", "value", "message"), [
    (check_amplification, "bright", "amplification='bright' is not allowed"),
    (check_amplification, 500.0, "amplification=500 is outside"),
    (check_amplification, True, "amplification=True is not allowed"),
    (check_m_values, [1, 0], "m=0 is not allowed"),
    (check_m_values, ["x"], "m='x' is not allowed"),
    (check_m_values, [], "m=\\[\\] holds no value"),
    (check_image_format, "bmp", "format='bmp' is not allowed"),
])
def test_settings_are_checked_with_the_key_named(check: object, value: object,
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(value)  # type: ignore[operator]


def test_good_settings_pass_their_checks() -> None:
    assert check_amplification("estimated") == "estimated"
    assert check_amplification(100) == 100.0
    assert check_m_values([1, 5.5]) == [1.0, 5.5]
    assert check_image_format(".TIFF") == "tiff"
    check_tiling(None, 10_000)  # no tiling: the overlap does not matter
    check_tiling(1024, 64)

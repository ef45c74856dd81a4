"""DNG writer: every file must decode in LibRaw (rawpy) exactly as written, like a camera raw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rawpy

from datamodules.dng import CFA_CODES, TMP_SUFFIX, write_bayer_dng

NEUTRAL = (0.5, 1.0, 0.6)
SITES = ((0, 0), (0, 1), (1, 0), (1, 1))


def cfa_letters(raw: rawpy.RawPy) -> str:
    desc = raw.color_desc.decode("ascii")
    return "".join(desc[int(i)] for i in np.asarray(raw.raw_pattern).ravel())


def per_site_mosaic(pattern: str, rgb: tuple[float, float, float], height: int = 64,
                    width: int = 96, black: int = 512, white: int = 16383) -> np.ndarray:
    """Uniform scene of raw colour ``rgb`` (fractions of the range) laid out on ``pattern``."""
    mosaic = np.empty((height, width), np.float64)
    for (dy, dx), colour in zip(SITES, CFA_CODES[pattern], strict=True):
        mosaic[dy::2, dx::2] = black + rgb[colour] * (white - black)
    return np.rint(mosaic).astype(np.uint16)


def render(path: Path, **kwargs: object) -> np.ndarray:
    with rawpy.imread(str(path)) as raw:
        return raw.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True,
                               output_bps=16, **kwargs)


@pytest.mark.parametrize("pattern", sorted(CFA_CODES))
def test_round_trip_every_pattern(tmp_path: Path, pattern: str) -> None:
    mosaic = np.random.default_rng(1).integers(0, 16384, size=(70, 100), dtype=np.uint16)
    path = write_bayer_dng(tmp_path / "sub" / f"{pattern}.dng", mosaic, exposure_time=0.04,
                           cfa_pattern=pattern, iso=400)
    assert path == tmp_path / "sub" / f"{pattern}.dng"
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, mosaic)
        assert raw.raw_image_visible.dtype == np.uint16
        assert list(raw.black_level_per_channel) == [512] * 4
        assert raw.white_level == 16383
        assert cfa_letters(raw) == pattern
        assert raw.num_colors == 3
        # camera WB is the inverse of the as-shot neutral, normalised to green
        np.testing.assert_allclose(raw.camera_whitebalance[:3], [2.0, 1.0, 1 / 0.6], rtol=1e-4)
        assert raw.other.shutter_speed == pytest.approx(0.04, rel=1e-6)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_custom_levels_and_odd_tile_size(tmp_path: Path) -> None:
    mosaic = np.random.default_rng(2).integers(0, 4096, size=(34, 50), dtype=np.uint16)
    path = write_bayer_dng(tmp_path / "a.dng", mosaic, exposure_time=10.0, black_level=1024,
                           white_level=4095)
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, mosaic)
        assert list(raw.black_level_per_channel) == [1024] * 4 and raw.white_level == 4095
        assert raw.other.shutter_speed == pytest.approx(10.0)


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_grey_renders_neutral(tmp_path: Path, pattern: str) -> None:
    """A surface whose raw values are proportional to the as-shot neutral is grey."""
    grey = tuple(0.4 * n for n in NEUTRAL)
    path = write_bayer_dng(tmp_path / "grey.dng", per_site_mosaic(pattern, grey),
                           exposure_time=10.0, cfa_pattern=pattern)
    rgb = render(path)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint16
    mean = rgb[8:-8, 8:-8].reshape(-1, 3).mean(axis=0)
    assert 0.2 * 65535 < mean.mean() < 0.9 * 65535
    np.testing.assert_allclose(mean, mean.mean(), rtol=0.01)


@pytest.mark.parametrize("linear", [(0.6, 0.1, 0.1), (0.1, 0.5, 0.1), (0.1, 0.1, 0.6)])
def test_colours_come_back_as_linear_srgb(tmp_path: Path, linear: tuple[float, ...]) -> None:
    """The colour tags describe camera = neutral * linear sRGB, so LibRaw undoes it exactly."""
    raw_rgb = tuple(n * c for n, c in zip(NEUTRAL, linear, strict=True))
    path = write_bayer_dng(tmp_path / "c.dng", per_site_mosaic("RGGB", raw_rgb),
                           exposure_time=1.0)
    rgb = render(path, gamma=(1, 1))
    mean = rgb[8:-8, 8:-8].reshape(-1, 3).mean(axis=0) / 65535
    np.testing.assert_allclose(mean, linear, atol=0.01)


def test_values_below_black_are_kept(tmp_path: Path) -> None:
    """Noisy short exposures dip below the black level; the file must keep them."""
    mosaic = np.full((32, 32), 512, np.uint16)
    mosaic[::3, ::5] = 500
    path = write_bayer_dng(tmp_path / "dark.dng", mosaic, exposure_time=0.1)
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, mosaic)


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path: Path) -> None:
    good = np.full((32, 32), 600, np.uint16)
    target = tmp_path / "x.dng"
    with pytest.raises(TypeError, match=r"x\.dng.*integer"):
        write_bayer_dng(target, good.astype(np.float32), exposure_time=1.0)
    with pytest.raises(ValueError, match=r"x\.dng.*\[20000, 20000\].*white_level=16383"):
        write_bayer_dng(target, np.full((32, 32), 20000, np.int32), exposure_time=1.0)
    with pytest.raises(ValueError, match=r"x\.dng.*cfa_pattern 'RGBG'"):
        write_bayer_dng(target, good, exposure_time=1.0, cfa_pattern="RGBG")
    for shape in [(32,), (21, 32), (32, 20)]:
        with pytest.raises(ValueError, match=r"x\.dng.*2-D array of at least 22x22"):
            write_bayer_dng(target, np.full(shape, 600, np.uint16), exposure_time=1.0)
    with pytest.raises(ValueError, match=r"x\.dng.*exposure_time"):
        write_bayer_dng(target, good, exposure_time=0.0)
    with pytest.raises(ValueError, match=r"x\.dng.*black_level=700"):
        write_bayer_dng(target, good, exposure_time=1.0, black_level=700, white_level=600)
    with pytest.raises(ValueError, match=r"x\.dng.*as_shot_neutral"):
        write_bayer_dng(target, good, exposure_time=1.0, as_shot_neutral=(0.5, 0.0, 1.0))
    assert not any(tmp_path.iterdir())


def test_overwrite_is_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "a.dng"
    first = np.full((24, 24), 1000, np.uint16)
    write_bayer_dng(path, first, exposure_time=1.0)
    write_bayer_dng(path, first + 1, exposure_time=1.0)
    with rawpy.imread(str(path)) as raw:
        assert int(raw.raw_image_visible[0, 0]) == 1001
    assert not list(tmp_path.glob(f"*{TMP_SUFFIX}"))

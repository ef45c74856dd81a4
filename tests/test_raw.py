"""Raw reading on real DNG files: packing order, levels, crops and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rawpy
import torch
import torch.nn.functional as F

from datamodules.raw import (
    RawReadError,
    cropped_shape,
    normalise,
    orient_as_shot,
    pack_bayer,
    read_raw,
    render_target,
    unpack_bayer,
)
from tests.helpers import write_dng_with_levels

SITE_VALUES = {"R": 1000, "G0": 2000, "G1": 3000, "B": 4000}


def site_mosaic(height: int, width: int) -> np.ndarray:
    """RGGB mosaic with one distinct value per Bayer site."""
    mosaic = np.empty((height, width), np.uint16)
    mosaic[0::2, 0::2] = SITE_VALUES["R"]
    mosaic[0::2, 1::2] = SITE_VALUES["G0"]
    mosaic[1::2, 0::2] = SITE_VALUES["G1"]
    mosaic[1::2, 1::2] = SITE_VALUES["B"]
    return mosaic


def write_dng(path: Path, mosaic: np.ndarray, **kwargs: object) -> Path:
    from datamodules.dng import write_bayer_dng

    return write_bayer_dng(path, mosaic, **{"exposure_time": 0.1, **kwargs})


def test_pack_order_is_pixel_unshuffle() -> None:
    mosaic = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12)
    packed = pack_bayer(mosaic)
    expected = F.pixel_unshuffle(torch.from_numpy(mosaic.astype(np.int32))[None, None], 2)[0]
    np.testing.assert_array_equal(packed, expected.numpy())
    np.testing.assert_array_equal(pack_bayer(site_mosaic(4, 6))[:, 0, 0], [1000, 2000, 3000, 4000])
    np.testing.assert_array_equal(unpack_bayer(packed), mosaic)
    with pytest.raises(ValueError, match="even"):
        pack_bayer(mosaic[:7])


def test_normalise_levels() -> None:
    raw = np.array([0, 511, 512, 8447, 16383, 20000], np.uint16)
    out = normalise(raw, 512, 16383)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0, 7935 / 15871, 1.0, 19488 / 15871], rtol=1e-6)
    packed = np.full((4, 2, 2), 1000, np.uint16)
    per_channel = normalise(packed, (500, 600, 700, 800), 16383)
    np.testing.assert_allclose(per_channel[:, 0, 0], [(1000 - b) / (16383 - b) for b in
                                                      (500, 600, 700, 800)], rtol=1e-6)
    with pytest.raises(ValueError, match="per-channel"):
        normalise(raw, (500, 600, 700, 800), 16383)


def test_cropped_shape() -> None:
    assert cropped_shape(2848, 4256) == (2848, 4256)
    assert cropped_shape(70, 100) == (64, 96)
    assert cropped_shape(31, 100) == (0, 96)


def test_read_dng_packs_levels_and_crops(tmp_path: Path) -> None:
    path = write_dng(tmp_path / "00001_00_0.1s.dng", site_mosaic(70, 100))
    frame = read_raw(path)
    assert frame.shape == (64, 96) and frame.visible_shape == (70, 100)
    assert frame.black_level == (512, 512, 512, 512) and frame.white_level == 16383
    packed = pack_bayer(frame.mosaic)
    for channel, site in enumerate(("R", "G0", "G1", "B")):
        assert np.all(packed[channel] == SITE_VALUES[site]), site
    normalised = normalise(packed, frame.black_level, frame.white_level)
    np.testing.assert_allclose(normalised[:, 0, 0], [(v - 512) / 15871 for v in (1000, 2000,
                                                      3000, 4000)], rtol=1e-6)


def test_read_dng_custom_black_level(tmp_path: Path) -> None:
    path = write_dng(tmp_path / "a_dark.dng", site_mosaic(64, 64), black_level=1024,
                     white_level=4095)
    frame = read_raw(path)
    assert frame.black_level == (1024,) * 4 and frame.white_level == 4095


def test_render_target_matches_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mosaic = rng.integers(600, 9000, size=(70, 100), dtype=np.uint16)
    path = write_dng(tmp_path / "00001_00_10s.dng", mosaic, exposure_time=10.0)
    rgb = render_target(path)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint16
    assert 0 < rgb.mean() < 65535


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RawReadError, match=r"not found: .*nothing\.ARW"):
        read_raw(tmp_path / "nothing.ARW")


def test_truncated_and_garbage_files(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = write_dng(tmp_path / "00001_00_0.1s.dng", site_mosaic(128, 192))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    truncated = r"cannot decode .*00001_00_0\.1s\.dng.*truncated"
    with pytest.raises(RawReadError, match=truncated) as err:
        read_raw(path)
    # LibRaw's own line (C code, straight to fd 2) is part of the error, not a stray line beside it;
    # rawpy's bytes message is shown as text.
    assert "LibRawIOError: Input/output error; LibRaw: Unexpected end of file" in str(err.value)
    assert "Unexpected end of file" not in capfd.readouterr().err
    with pytest.raises(RawReadError, match=r"00001_00_0\.1s\.dng"):
        render_target(path)
    junk = tmp_path / "junk.ARW"
    junk.write_bytes(b"not a raw file" * 100)
    with pytest.raises(RawReadError, match=r"junk\.ARW.*not .*raw"):
        read_raw(junk)


@pytest.mark.parametrize("pattern", ["GRBG", "BGGR"])
def test_non_rggb_is_refused(tmp_path: Path, pattern: str) -> None:
    path = write_dng(tmp_path / f"{pattern}.dng", site_mosaic(64, 64), cfa_pattern=pattern)
    with pytest.raises(RawReadError, match=rf"{pattern}\.dng has CFA layout {pattern}.*RGGB"):
        read_raw(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_as_shot_turns_the_image_as_libraw_shows_the_file(tmp_path: Path,
                                                                 orientation: int) -> None:
    """Each TIFF Orientation value, against LibRaw's own rendering of the same file: a portrait
    photo (6 or 8) comes out portrait, and a mirrored one mirrored back."""
    mosaic = site_mosaic(32, 48)
    mosaic[:8, :12] = 16000  # a bright top-left corner: every turn and mirror moves it
    path = write_dng(tmp_path / "turned.dng", mosaic, orientation=orientation)
    frame = read_raw(path, multiple=2)
    with rawpy.imread(str(path)) as raw:
        as_stored = raw.postprocess(output_bps=16, user_flip=0)
    with rawpy.imread(str(path)) as raw:
        as_shown = raw.postprocess(output_bps=16)
    ours = orient_as_shot(torch.from_numpy(as_stored.astype(np.int32)).permute(2, 0, 1),
                          frame.flip)
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), as_shown)
    assert (frame.flip != 0) == (orientation != 1)


def test_a_white_level_not_above_the_black_level_names_the_file(tmp_path: Path) -> None:
    """It ended as a bare ValueError from normalise(), without the file's name; in a restore
    folder run that traceback stopped every remaining file."""
    path = write_dng_with_levels(tmp_path / "levels.dng", np.full((64, 64), 700),
                                 black_level=800, white_level=700)
    with pytest.raises(RawReadError, match=r"levels\.dng gives white level 700 and black levels "
                                           r"800, 800, 800, 800: the white level must be above"):
        read_raw(path)


def test_libraw_output_passes_on_what_is_not_a_failed_files_complaint(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Captured fd-2 output that is not LibRaw's complaint about a file that failed is written to
    stderr after the read: nothing another thread (or LibRaw, on a file that decoded) wrote is
    lost."""
    import os

    from datamodules.libraw_messages import libraw_output

    path = tmp_path / "a.dng"
    with libraw_output(path) as said:
        os.write(2, f"{path}: a note on a file that decoded\n".encode())
    assert said == [] and f"{path}: a note on a file that decoded" in capfd.readouterr().err
    with pytest.raises(rawpy.LibRawIOError), libraw_output(path) as said:
        os.write(2, f"{path}: Unexpected end of file\nanother thread's line\n".encode())
        raise rawpy.LibRawIOError(b"Input/output error")
    assert said == ["Unexpected end of file"]
    err = capfd.readouterr().err
    assert "another thread's line" in err and "Unexpected end of file" not in err
    with pytest.raises(ValueError), libraw_output(path) as said:  # not LibRaw's failure
        os.write(2, f"{path}: kept\n".encode())
        raise ValueError
    assert said == [] and f"{path}: kept" in capfd.readouterr().err

"""Writing real Bayer DNG files that LibRaw (rawpy) decodes exactly like a camera raw.

darkraw's tests and its synthetic dataset need raw files that go through the very same reader as
SID's Sony ``.ARW`` files (``rawpy.imread`` -> ``raw_image_visible``, black/white levels, CFA
layout, ``postprocess`` for the ground truth). DNG is the only raw format we can write ourselves,
so this module encodes a mosaic as an uncompressed 16-bit CFA DNG with pidng's TIFF writer.

Colour: the "camera" of these files sees linear sRGB (D65) scaled per channel by
``as_shot_neutral``, i.e. ``camera = diag(neutral) @ linear_sRGB``. The ColorMatrix, ForwardMatrix
and AsShotNeutral tags all describe that same camera, so ``postprocess(use_camera_wb=True)`` turns
a neutral patch (raw values proportional to ``neutral``) back into grey, and colours come out as
the linear sRGB the caller started from.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pidng.core import RAW2DNG
from pidng.defs import CalibrationIlluminant, DNGVersion, Orientation, PhotometricInterpretation
from pidng.dng import DNGTags, Tag

from darkraw.disk import replaced_when_complete

#: DNG CFAPattern codes (0 red, 1 green, 2 blue) of each 2x2 layout, read row by row.
CFA_CODES: dict[str, tuple[int, int, int, int]] = {
    "RGGB": (0, 1, 1, 2),
    "GRBG": (1, 0, 2, 1),
    "GBRG": (1, 2, 0, 1),
    "BGGR": (2, 1, 1, 0),
}

#: XYZ (D65 white) -> linear sRGB. With ``diag(neutral)`` in front it is the ColorMatrix1 of a
#: camera whose channels are linear sRGB scaled by the as-shot neutral (see module docstring).
XYZ_TO_LINEAR_SRGB = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)

#: Linear sRGB -> XYZ with a D50 white (Bradford-adapted), the DNG ForwardMatrix of the same
#: camera: white-balanced camera RGB is linear sRGB, and DNG forward matrices map to D50.
LINEAR_SRGB_TO_XYZ_D50 = np.array(
    [
        [0.4360747, 0.3850649, 0.1430804],
        [0.2225045, 0.7168786, 0.0606169],
        [0.0139322, 0.0971045, 0.7141733],
    ]
)

#: Largest denominator of the TIFF rationals; 1e-4 relative error is far below colour noise.
RATIONAL_DENOMINATOR = 10_000

#: TIFF tile sides are 16-bit fields in pidng, and the whole image is stored as one tile.
MAX_SIDE = 65_535

#: LibRaw refuses ("not RAW file") images narrower or shorter than this (checked with rawpy 0.28).
MIN_SIDE = 22

#: Lens aperture written to the EXIF data (SID's list files say F8).
DEFAULT_F_NUMBER = 8.0

#: Marks temporary files of an unfinished write, so cleanup code can recognise them.
TMP_SUFFIX = ".darkraw-tmp"

CAMERA_MAKE = "darkraw"
CAMERA_MODEL = "Synthetic Bayer"


def _rational(value: float) -> list[int]:
    """TIFF (S)RATIONAL as ``[numerator, denominator]``: pidng's rational encoding."""
    frac = Fraction(float(value)).limit_denominator(RATIONAL_DENOMINATOR)
    return [frac.numerator, frac.denominator]


def _rationals(values: np.ndarray | tuple[float, ...]) -> list[list[int]]:
    return [_rational(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _check_levels(path: Path, black_level: int, white_level: int) -> None:
    if not 0 <= black_level < white_level <= MAX_SIDE:
        raise ValueError(
            f"{path}: need 0 <= black_level < white_level <= 65535 for a 16-bit DNG, got "
            f"black_level={black_level}, white_level={white_level}"
        )


def _check_mosaic(path: Path, mosaic: np.ndarray, white_level: int) -> np.ndarray:
    """The mosaic as C-contiguous uint16, after refusing anything that would not round-trip."""
    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2 or min(mosaic.shape) < MIN_SIDE:
        raise ValueError(
            f"{path}: a Bayer mosaic must be a 2-D array of at least {MIN_SIDE}x{MIN_SIDE} pixels "
            f"(LibRaw rejects smaller raw files), got shape {mosaic.shape}"
        )
    if max(mosaic.shape) > MAX_SIDE:
        raise ValueError(f"{path}: mosaic shape {mosaic.shape} exceeds {MAX_SIDE} pixels per side")
    if not np.issubdtype(mosaic.dtype, np.integer):
        raise TypeError(
            f"{path}: the mosaic must hold integer raw values (e.g. uint16), got dtype "
            f"{mosaic.dtype}; round and cast it first (np.rint(x).astype(np.uint16))"
        )
    low, high = int(mosaic.min()), int(mosaic.max())
    if low < 0 or high > white_level:
        raise ValueError(
            f"{path}: mosaic values span [{low}, {high}], outside [0, white_level={white_level}]; "
            "clip them (real sensors clip at the white level)"
        )
    return np.ascontiguousarray(mosaic, dtype=np.uint16)


def _check_neutral(path: Path, neutral: tuple[float, float, float]) -> np.ndarray:
    values = np.asarray(neutral, dtype=np.float64)
    if values.shape != (3,) or not np.all(values > 0):
        raise ValueError(
            f"{path}: as_shot_neutral must be three positive numbers (the raw R, G, B of a white "
            f"surface), got {neutral!r}"
        )
    return values


def _tags(
    height: int,
    width: int,
    *,
    exposure_time: float,
    black_level: int,
    white_level: int,
    cfa_pattern: str,
    neutral: np.ndarray,
    iso: int,
    orientation: int = Orientation.Horizontal,
) -> DNGTags:
    tags = DNGTags()
    tags.set(Tag.ImageWidth, width)
    tags.set(Tag.ImageLength, height)
    tags.set(Tag.TileWidth, width)
    tags.set(Tag.TileLength, height)
    tags.set(Tag.Orientation, orientation)
    tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    tags.set(Tag.SamplesPerPixel, 1)
    tags.set(Tag.BitsPerSample, 16)
    tags.set(Tag.CFARepeatPatternDim, [2, 2])
    tags.set(Tag.CFAPattern, list(CFA_CODES[cfa_pattern]))
    tags.set(Tag.BlackLevel, int(black_level))
    tags.set(Tag.WhiteLevel, int(white_level))
    tags.set(Tag.ColorMatrix1, _rationals(np.diag(neutral) @ XYZ_TO_LINEAR_SRGB))
    tags.set(Tag.ForwardMatrix1, _rationals(LINEAR_SRGB_TO_XYZ_D50))
    tags.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    tags.set(Tag.AsShotNeutral, _rationals(neutral))
    tags.set(Tag.Make, CAMERA_MAKE)
    tags.set(Tag.Model, CAMERA_MODEL)
    tags.set(Tag.UniqueCameraModel, f"{CAMERA_MAKE} {CAMERA_MODEL}")
    tags.set(Tag.DNGVersion, DNGVersion.V1_4)
    tags.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    # TIFF/EP allows these EXIF tags in IFD 0 (pidng 4.0.9 cannot write an EXIF sub-IFD); LibRaw
    # reads the shutter time from there (``rawpy.RawPy.other.shutter_speed``).
    tags.set(Tag.ExposureTime, [_rational(exposure_time)])
    tags.set(Tag.FNumber, [_rational(DEFAULT_F_NUMBER)])
    tags.set(Tag.PhotographicSensitivity, int(iso))
    return tags


def encode_bayer_dng(
    mosaic: np.ndarray,
    *,
    exposure_time: float,
    black_level: int = 512,
    white_level: int = 16383,
    cfa_pattern: str = "RGGB",
    as_shot_neutral: tuple[float, float, float] = (0.5, 1.0, 0.6),
    iso: int = 100,
    orientation: int = Orientation.Horizontal,
    name: str = "<memory>",
) -> bytes:
    """The bytes of a DNG file; kept separate from writing so files can be written atomically.

    ``orientation`` is the TIFF/EXIF Orientation tag (1: as stored, 6: turn 90 degrees clockwise
    to view, ...: how a camera records a photo taken upright); ``name`` only labels errors.
    """
    where = Path(name)
    pattern = cfa_pattern.upper()
    if pattern not in CFA_CODES:
        raise ValueError(f"{where}: cfa_pattern {cfa_pattern!r} is not one of {sorted(CFA_CODES)}")
    if not exposure_time > 0:
        raise ValueError(f"{where}: exposure_time must be positive seconds, got {exposure_time}")
    _check_levels(where, black_level, white_level)
    data = _check_mosaic(where, mosaic, white_level)
    if orientation not in range(1, 9):
        raise ValueError(f"{where}: orientation must be a TIFF Orientation value 1..8, got "
                         f"{orientation!r}")
    tags = _tags(
        *data.shape,
        exposure_time=exposure_time,
        black_level=black_level,
        white_level=white_level,
        cfa_pattern=pattern,
        neutral=_check_neutral(where, as_shot_neutral),
        iso=iso,
        orientation=int(orientation),
    )
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    return bytes(writer.convert(data))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temporary sibling and ``os.replace``.

    A process killed mid-write then leaves at most a ``*.darkraw-tmp`` file, never a truncated file
    under the real name that a later run would take for a finished one.
    """
    path = Path(path)
    # Not tempfile.mkstemp: its 0600 mode would survive the rename and hide shared datasets.
    with replaced_when_complete(path, suffix=TMP_SUFFIX) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
    return path


def write_bayer_dng(path: str | Path, mosaic: np.ndarray, *, exposure_time: float,
                    **settings: Any) -> Path:
    """Write ``mosaic`` (HxW integer raw values in [0, white_level]) as a Bayer DNG at ``path``.

    ``settings`` are :func:`encode_bayer_dng`'s (levels, ``cfa_pattern``, ``as_shot_neutral``,
    ``iso``, ``orientation``), with its defaults. The parent folder is created; the file appears
    atomically. Returns ``path``.
    """
    path = Path(path)
    data = encode_bayer_dng(mosaic, exposure_time=exposure_time, name=str(path), **settings)
    return atomic_write_bytes(path, data)

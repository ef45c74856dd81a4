"""Reading raw files with rawpy: the network's packed input and the SID ground truth.

Everything that decides which pixels the network sees lives here, so that the cache, the
benchmark and any inference script crop, pack and render a file the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rawpy
import torch

from darkraw.errors import DataError
from datamodules.libraw_messages import libraw_output

#: Both image sides are cropped to a multiple of this (the network downsamples by 32).
CROP_MULTIPLE = 32

#: ``raw.postprocess`` settings of SID's ground truth. ``user_flip=0`` keeps the output in the
#: mosaic's orientation (a no-op on the Sony a7S II, whose files carry no rotation) so that input
#: and target stay pixel-aligned for cameras that do store one.
POSTPROCESS_PARAMS: dict[str, object] = {
    "use_camera_wb": True,
    "half_size": False,
    "no_auto_bright": True,
    "output_bps": 16,
    "user_flip": 0,
}

#: The only colour filter layout the network understands (packed order R, G, G, B).
EXPECTED_CFA = "RGGB"

#: What the errors below ask for: restoring also takes the other Bayer phases (shifted to RGGB).
NEEDED = ("a 2x2 R/G/B Bayer raw (RGGB like the Sony a7S II's; restore.py also takes BGGR, GRBG "
          "and GBRG)")


class RawReadError(DataError):
    """A raw file that cannot be used: missing, corrupt, or not an RGGB Bayer mosaic."""


@dataclass(frozen=True)
class RawFrame:
    """One decoded raw file, cropped so that packing and the network's downsampling are exact.

    ``black_level`` is per packed channel (R, G row 0, G row 1, B): some cameras store different
    black levels per CFA site, and a single number would shift one colour.
    """

    path: Path
    mosaic: np.ndarray
    black_level: tuple[float, float, float, float]
    white_level: float
    visible_shape: tuple[int, int]
    #: Rows and columns dropped at the top/left of the visible area so that the mosaic starts at
    #: an R site: (0, 0) for RGGB files, non-zero only with ``read_raw(any_bayer_phase=True)``.
    offset: tuple[int, int] = (0, 0)
    #: LibRaw's ``sizes.flip`` (from the file's Orientation tag): how to turn the mosaic's image
    #: to show it as the camera was held (see :func:`orient_as_shot`). Training ignores it.
    flip: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mosaic.shape[0]), int(self.mosaic.shape[1]))


def cropped_shape(height: int, width: int, multiple: int = CROP_MULTIPLE) -> tuple[int, int]:
    """Top-left anchored crop: offsets stay 0 (even), so the Bayer phase cannot change."""
    return (height // multiple) * multiple, (width // multiple) * multiple


def _libraw_reason(exc: BaseException, said: list[str]) -> str:
    """rawpy's error (its message is bytes: ``b'Input/output error'``) and what LibRaw printed."""
    message = exc.args[0] if len(exc.args) == 1 else exc
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    reason = f"{type(exc).__name__}: {message}"
    return reason + "".join(f"; LibRaw: {line}" for line in said)


@contextmanager
def open_raw(path: str | Path) -> Iterator[rawpy.RawPy]:
    """Open ``path`` with rawpy, turning LibRaw's anonymous errors into ones naming the file.

    What LibRaw prints on stderr about the file (``Unexpected end of file``) goes into the error
    instead of standing apart from it on the terminal (:mod:`datamodules.libraw_messages`).
    """
    path = Path(path)
    if not path.is_file():
        raise RawReadError(
            f"raw file not found: {path}. Check the dataset root and that the download is complete."
        )
    said: list[str] = []
    try:
        with libraw_output(path) as said:
            raw = rawpy.imread(str(path))
    except rawpy.LibRawFileUnsupportedError as exc:
        raise RawReadError(
            f"cannot decode {path}: LibRaw does not recognise it as a raw file "
            f"({_libraw_reason(exc, said)}). The file is probably corrupt or not a camera raw; "
            "re-download or delete it."
        ) from exc
    except (rawpy.LibRawError, OSError) as exc:
        raise RawReadError(
            f"cannot decode {path}: {_libraw_reason(exc, said)}. The file is probably truncated "
            f"or corrupt (size {path.stat().st_size} bytes); re-download it."
        ) from exc
    try:
        with libraw_output(path) as said:
            yield raw
    except rawpy.LibRawError as exc:
        raise RawReadError(
            f"cannot decode {path}: {_libraw_reason(exc, said)}. The file is probably truncated "
            f"or corrupt (size {path.stat().st_size} bytes); re-download it."
        ) from exc
    finally:
        raw.close()


def cfa_string(raw: rawpy.RawPy, path: Path) -> str:
    """The 2x2 colour layout at the visible area's top-left corner, e.g. ``"RGGB"``.

    Raises for anything that is not a 2x2 Bayer mosaic (X-Trans, linear/demosaiced DNG, 4-colour
    sensors), because packing such data into R, G, G, B would silently scramble the colours.
    """
    try:
        pattern = raw.raw_pattern
    except NotImplementedError as exc:  # rawpy: a colour filter layout it cannot describe
        raise RawReadError(
            f"{path} has a colour filter layout rawpy cannot describe ({exc!s}). darkraw needs "
            f"{NEEDED}."
        ) from exc
    if pattern is None:
        raise RawReadError(
            f"{path} holds no colour filter mosaic (rawpy raw_pattern is None: a linear or "
            f"already-demosaiced file). darkraw needs {NEEDED}."
        )
    pattern = np.asarray(pattern)
    desc = raw.color_desc.decode("ascii", errors="replace")
    if pattern.shape != (2, 2):
        raise RawReadError(
            f"{path} is not a 2x2 Bayer mosaic (CFA pattern {pattern.shape[0]}x{pattern.shape[1]}, "
            f"colours {desc!r}, e.g. Fuji X-Trans). darkraw needs {NEEDED}."
        )
    letters = "".join(desc[int(i)] if int(i) < len(desc) else "?" for i in pattern.ravel())
    if set(letters) - set("RGB"):
        raise RawReadError(
            f"{path} has colour filter {letters!r} (colours {desc!r}), not R/G/B: darkraw needs "
            f"{NEEDED}."
        )
    return letters


def _black_levels(raw: rawpy.RawPy,
                  offset: tuple[int, int] = (0, 0)) -> tuple[float, float, float, float]:
    """Black level of each 2x2 site in packed order, from LibRaw's per-colour levels.

    ``offset`` is where the packed mosaic starts in the visible area (see :func:`bayer_offset`):
    the sites, and so their levels, come in the order of the pattern shifted by it.
    """
    per_colour = list(raw.black_level_per_channel)
    pattern = np.roll(np.asarray(raw.raw_pattern), (-offset[0], -offset[1]), axis=(0, 1))
    r, g0, g1, b = (float(per_colour[int(i)]) for i in pattern.ravel())
    return (r, g0, g1, b)


def bayer_offset(cfa: str) -> tuple[int, int] | None:
    """(rows, columns) to drop at the top/left of a 2x2 Bayer layout so that it reads RGGB.

    RGGB (0, 0), GRBG (0, 1), GBRG (1, 0), BGGR (1, 1). Anything else (e.g. ``"RGBG"``, its
    greens in one column) has no such shift: None.
    """
    grid = (cfa[:2], cfa[2:])
    for dy in (0, 1):
        for dx in (0, 1):
            shifted = "".join(grid[(y + dy) % 2][(x + dx) % 2] for y in (0, 1) for x in (0, 1))
            if shifted == EXPECTED_CFA:
                return dy, dx
    return None


def read_raw(path: str | Path, multiple: int = CROP_MULTIPLE, *,
             any_bayer_phase: bool = False) -> RawFrame:
    """Decode the visible mosaic of an RGGB Bayer raw, cropped to multiples of ``multiple``.

    Training and evaluation keep insisting on RGGB (``any_bayer_phase=False``): their targets are
    pixel-aligned with the mosaic, and a silent one-pixel shift would misalign every pair.
    Restoring a user's file has no target, so ``any_bayer_phase=True`` also takes the other
    three 2x2 Bayer layouts (BGGR, GRBG, GBRG): it drops one row and/or column at the top/left
    so the mosaic starts at an R site, and records that in ``RawFrame.offset`` for the caller to
    put back.
    """
    path = Path(path)
    with open_raw(path) as raw:
        cfa = cfa_string(raw, path)
        offset = bayer_offset(cfa)
        if not any_bayer_phase and offset != (0, 0):
            offset = None
        if offset is None:
            allowed = "a 2x2 Bayer layout (RGGB, BGGR, GRBG or GBRG)" if any_bayer_phase else (
                f"{EXPECTED_CFA} (the Sony a7S II layout the network's packed channels assume)")
            raise RawReadError(
                f"{path} has CFA layout {cfa} at its top-left pixel, darkraw expects {allowed}."
            )
        visible = raw.raw_image_visible
        dy, dx = offset
        h, w = cropped_shape(visible.shape[0] - dy, visible.shape[1] - dx, multiple)
        if h == 0 or w == 0:
            raise RawReadError(
                f"{path} is {visible.shape[0]}x{visible.shape[1]} pixels: smaller than "
                f"{multiple}x{multiple}, the smallest image the network accepts."
            )
        mosaic = np.array(visible[dy:dy + h, dx:dx + w], dtype=np.uint16, copy=True)
        black_level = _black_levels(raw, offset)
        white_level = float(raw.white_level)
        if white_level <= max(black_level):
            raise RawReadError(
                f"{path} gives white level {white_level:g} and black levels "
                f"{', '.join(f'{b:g}' for b in black_level)}: the white level must be above them "
                "(a damaged file, or levels LibRaw reads wrong for this camera), so its values "
                "cannot be scaled to the network's [0, 1] input"
            )
        return RawFrame(
            path=path,
            mosaic=mosaic,
            black_level=black_level,
            white_level=white_level,
            visible_shape=(int(visible.shape[0]), int(visible.shape[1])),
            offset=offset,
            flip=int(raw.sizes.flip),
        )


def orient_as_shot(image: torch.Tensor, flip: int) -> torch.Tensor:
    """An image (..., H, W) in the mosaic's orientation, turned as LibRaw shows the file.

    ``flip`` is LibRaw's ``sizes.flip``: bit 1 mirrors left-right, bit 2 top-bottom, then bit 4
    swaps rows and columns (6: a quarter turn clockwise, 5: anticlockwise, 3: a half turn), the
    order LibRaw applies them in. A portrait photo's mosaic is stored sideways; without this its
    restoration would be too.
    """
    if flip & 1:
        image = image.flip(-1)
    if flip & 2:
        image = image.flip(-2)
    if flip & 4:
        image = image.transpose(-1, -2)
    return image


def render_target(path: str | Path, multiple: int = CROP_MULTIPLE) -> np.ndarray:
    """SID's ground truth: LibRaw's sRGB rendering, full size, uint16 HxWx3, cropped like input."""
    path = Path(path)
    with open_raw(path) as raw:
        cfa_string(raw, path)
        visible = tuple(int(s) for s in raw.raw_image_visible.shape)
        rgb = raw.postprocess(**POSTPROCESS_PARAMS)
    if tuple(rgb.shape[:2]) != visible:
        raise RawReadError(
            f"{path}: LibRaw renders it at {rgb.shape[0]}x{rgb.shape[1]} but its mosaic is "
            f"{visible[0]}x{visible[1]}; input and target would not be aligned. This camera "
            "(non-square pixels or a rotated sensor) is not supported."
        )
    h, w = cropped_shape(*visible, multiple)
    return np.ascontiguousarray(rgb[:h, :w], dtype=np.uint16)


def normalise(
    raw: np.ndarray, black: float | Sequence[float] | np.ndarray, white: float
) -> np.ndarray:
    """``max(raw - black, 0) / (white - black)`` in float32: the network's input scale.

    ``black`` is a scalar, or per-channel values of a packed (4, h, w) array (length 4).
    """
    black_arr = np.asarray(black, dtype=np.float32)
    if black_arr.ndim == 1:
        if raw.ndim != 3 or raw.shape[0] != black_arr.shape[0]:
            raise ValueError(
                f"per-channel black levels {tuple(black_arr.tolist())} need a packed "
                f"({black_arr.shape[0]}, h, w) array, got shape {raw.shape}"
            )
        black_arr = black_arr.reshape(-1, 1, 1)
    scale = np.float32(white) - black_arr
    if np.any(scale <= 0):
        raise ValueError(f"white level {white} must be above the black level {black}")
    out = raw.astype(np.float32) - black_arr
    np.maximum(out, 0.0, out=out)
    out /= scale
    return out


def pack_bayer(mosaic: np.ndarray) -> np.ndarray:
    """(H, W) RGGB mosaic -> (4, H/2, W/2) in ``pixel_unshuffle(mosaic, 2)`` order: R, G, G, B."""
    if mosaic.ndim != 2 or mosaic.shape[0] % 2 or mosaic.shape[1] % 2:
        raise ValueError(f"pack_bayer needs a 2-D mosaic with even sides, got shape {mosaic.shape}")
    h, w = mosaic.shape
    return np.ascontiguousarray(
        mosaic.reshape(h // 2, 2, w // 2, 2).transpose(1, 3, 0, 2).reshape(4, h // 2, w // 2)
    )


def unpack_bayer(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bayer` (``pixel_shuffle``): (4, h, w) -> (2h, 2w) mosaic."""
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"unpack_bayer needs a (4, h, w) array, got shape {packed.shape}")
    _, h, w = packed.shape
    return np.ascontiguousarray(
        packed.reshape(2, 2, h, w).transpose(2, 0, 3, 1).reshape(2 * h, 2 * w)
    )

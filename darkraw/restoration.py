"""Restoring whole raw files of any size: padding, overlapping tiles, amplification, writing.

Training sees only multiples of 32 and 512 px crops of RGGB files; users bring arbitrary camera
files. Sizes are padded (reflect, in the packed domain, so the Bayer channels keep their meaning)
and cropped back, the other three Bayer phases are shifted to RGGB and padded back, and images
too large for memory run in overlapping tiles blended with linear ramps. A folder is restored file
by file: a file that cannot be read or written is reported and skipped, not fatal to the rest.
Its entries that are not raw files are named, not silently passed over, and files sharing a name
(``IMG_1.CR2``, ``IMG_1.DNG``) keep their extension in their images' names, so that neither
replaces the other.
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import rawpy
import torch
import torch.nn.functional as F
from torch import nn

from darkraw.disk import replaced_when_complete
from darkraw.errors import ConfigError, DarkrawError, DataError, first_few
from datamodules.amplification import (
    DEFAULT_M,
    MAX_AMPLIFICATION,
    MIN_AMPLIFICATION,
    estimated_amplification,
)
from datamodules.raw import (
    RawFrame,
    RawReadError,
    normalise,
    orient_as_shot,
    pack_bayer,
    read_raw,
)

#: Camera raw formats LibRaw decodes (its supported-cameras list), by file extension: a folder
#: run takes the files with these. An X-Trans RAF is taken by its name too; the 2x2 Bayer check
#: then refuses it, naming the file. Not here: Sigma X3F (Foveon, no mosaic; LibRaw 0.21 dropped
#: it) and video raws (R3D, ARI, CINE), which LibRaw does not read.
RAW_EXTENSIONS = (
    ".3fr", ".arw", ".bay", ".cap", ".cr2", ".cr3", ".crw", ".dcr", ".dcs", ".dng", ".eip",
    ".erf", ".fff", ".gpr", ".iiq", ".k25", ".kc2", ".kdc", ".mdc", ".mef", ".mfw", ".mos",
    ".mrw", ".nef", ".nrw", ".orf", ".ori", ".pef", ".ptx", ".pxn", ".raf", ".raw", ".rw2",
    ".rwl", ".sr2", ".srf", ".srw",
)
#: The network downsamples the packed input by 16: its output is shift-invariant only for shifts
#: by multiples of 16 packed px, so sizes are padded to, and tiles start at, multiples of it.
PACKED_MULTIPLE = 16
IMAGE_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff")
#: Failed files named in the final error line; the others are in the warnings above it.
MAX_FAILURES_LISTED = 5
#: Entries of each kind named in the line about what a folder run skipped.
MAX_SKIPPED_LISTED = 3
#: macOS writes ``._<name>`` beside each file on FAT/exFAT/network volumes (an SD card): resource
#: forks of a few KB, named like the raw they belong to, never images themselves.
APPLEDOUBLE_PREFIX = "._"


def listed_names(paths: Sequence[Path], limit: int = MAX_SKIPPED_LISTED) -> str:
    """The first ``limit`` file names, and how many more: a line stays short for any folder."""
    return first_few([path.name for path in paths], limit)


@dataclass(frozen=True)
class RawListing:
    """The raw files a run restores, and the folder entries it passes over, by why."""

    files: list[Path]
    #: Entries not taken, in order: macOS ``._*`` metadata files, folders (and anything else
    #: that is not a file, e.g. a broken link), files of other extensions.
    metadata: list[Path] = field(default_factory=list)
    not_files: list[Path] = field(default_factory=list)
    other_extensions: list[Path] = field(default_factory=list)

    def skipped_message(self) -> str | None:
        """One line naming what was not taken, or None; said so that a raw format darkraw does
        not know by its extension, or a sub-folder of photos, is not passed over unnoticed."""
        groups = [
            (self.other_extensions, "not a raw file by its extension",
             "not raw files by their extension"),
            (self.not_files, "folder or other non-file (sub-folders are not searched)",
             "folders or other non-files (sub-folders are not searched)"),
            (self.metadata, "macOS metadata file (._*)", "macOS metadata files (._*)"),
        ]
        parts = []
        for entries, one, many in groups:
            if entries:
                parts.append(f"{len(entries)} {one if len(entries) == 1 else many}: "
                             f"{listed_names(entries)}")
        if not parts:
            return None
        total = sum(len(entries) for entries, _, _ in groups)
        return f"skipped {total} entr{'y' if total == 1 else 'ies'}: {'; '.join(parts)}"


def list_raw_files(source: str | Path) -> RawListing:
    """The raw file itself, or every raw file (by extension) directly inside a folder.

    A folder's entries that are not taken are kept in the listing, for the caller to say so: a
    folder (even one named ``x.dng``) or a macOS ``._x.dng`` would otherwise reach the decoder
    and fail with advice that fits neither.
    """
    source = Path(source)
    if source.is_file():
        return RawListing(files=[source])
    if not source.is_dir():
        raise DataError(f"input={source} does not exist: give a raw file or a folder of them")
    listing = RawListing(files=[])
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(APPLEDOUBLE_PREFIX):
            listing.metadata.append(entry)
        elif not entry.is_file():
            listing.not_files.append(entry)
        elif entry.suffix.lower() not in RAW_EXTENSIONS:
            listing.other_extensions.append(entry)
        else:
            listing.files.append(entry)
    if not listing.files:
        skipped = listing.skipped_message()
        raise DataError(
            f"input={source} holds no raw files (taken by extension: "
            f"{' '.join(e.lstrip('.') for e in RAW_EXTENSIONS)})"
            + (f"; {skipped}" if skipped else ", and nothing else")
        )
    return listing


def output_stems(files: Sequence[Path]) -> dict[Path, str]:
    """The name each file's images start with: its stem, or ``<stem>_<EXT>`` where stems collide.

    ``IMG_0001.CR2`` and the ``IMG_0001.DNG`` converted from it would both write
    ``IMG_0001_m5.png``, the second silently replacing the first; with the extension in the name
    both are kept. Stems are compared ignoring case: ``A.dng`` and ``a.NEF`` collide on macOS and
    Windows folders. Names that still collide (``A.dng`` beside ``a.dng``, or ``a_NEF.dng``
    beside ``a.NEF``) are refused before any work, as one line naming them.
    """
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem.casefold(), []).append(path)
    stems = {path: (f"{path.stem}_{path.suffix.lstrip('.')}"
                    if len(by_stem[path.stem.casefold()]) > 1 else path.stem) for path in files}
    by_name: dict[str, list[Path]] = {}
    for path, stem in stems.items():
        by_name.setdefault(stem.casefold(), []).append(path)
    clashes = [group for group in by_name.values() if len(group) > 1]
    if clashes:
        first = clashes[0]
        case = ("; names differing only in case are one file on macOS and Windows"
                if len({stems[p] for p in first}) > 1 else "")
        raise DataError(
            f"{' and '.join(p.name for p in first)} in {first[0].parent} would write images of "
            f"the same name ({stems[first[0]]}_...{case}): rename one of them, or restore them "
            "into separate output folders"
        )
    return stems


def prepare_output_dir(output: str | Path) -> Path:
    """Create ``output`` and prove it writable before any network runs.

    Otherwise a path that is a file, lies under a file or in a read-only place fails with an
    OSError traceback only when the first image is written, after minutes of restoring.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={output} is a file, not a folder: give a folder for the "
                          "restored images (it is created if missing)")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"output={output} cannot be created or written ({reason}): give a "
                          "folder you can write to") from error
    return output


def even_mosaic(mosaic: np.ndarray) -> np.ndarray:
    """Make both sides even by repeating the row/column two back (same Bayer colour)."""
    if mosaic.shape[0] % 2:
        mosaic = np.concatenate([mosaic, mosaic[-2:-1]], axis=0)
    if mosaic.shape[1] % 2:
        mosaic = np.concatenate([mosaic, mosaic[:, -2:-1]], axis=1)
    return mosaic


def libraw_reason(error: BaseException) -> str:
    """LibRaw's message as text: rawpy passes it as bytes (``b'Input/output error'``)."""
    reason = error.args[0] if len(error.args) == 1 else str(error)
    if isinstance(reason, bytes):
        return reason.decode("utf-8", errors="replace")
    return str(reason)


def read_user_raw(path: Path) -> RawFrame:
    """:func:`read_raw` (any Bayer phase), with errors worded for a user's own photos.

    ``datamodules.raw`` words a file that LibRaw cannot read for the SID data set ("check the
    dataset root", "re-download it"); in a restore run it is a file of the user's folder that is
    not a raw file, or is a damaged copy, and downloading it again means nothing.
    """
    if not path.is_file():
        raise RawReadError(f"cannot read {path}: it is no longer a file (moved or deleted since "
                           "the run started)")
    try:
        return read_raw(path, multiple=1, any_bayer_phase=True)
    except RawReadError as error:
        cause = error.__cause__
        if isinstance(cause, rawpy.LibRawFileUnsupportedError):
            raise RawReadError(
                f"cannot decode {path}: LibRaw does not recognise it as a raw file "
                f"({libraw_reason(cause)}): it is not a readable raw file (another kind of file "
                "under a raw extension, or a damaged copy); check that it opens in a raw converter"
            ) from cause
        if isinstance(cause, rawpy.LibRawError | OSError):
            raise RawReadError(
                f"cannot decode {path}: {type(cause).__name__}: {libraw_reason(cause)}: it is not "
                f"a readable raw file ({path.stat().st_size} bytes: probably cut short or "
                "damaged); copy it again from the camera or card"
            ) from cause
        raise


@dataclass(frozen=True)
class PackedRaw:
    """A user's raw file as the network takes it, and what puts its output back in shape."""

    #: (4, h, w) float32 in [0, 1], RGGB, each side even.
    packed: np.ndarray
    #: The RGGB mosaic's (H, W): the output is cropped back to it.
    shape: tuple[int, int]
    #: Rows/columns before the first R site, put back by :func:`pad_to_visible`.
    offset: tuple[int, int]
    #: LibRaw's orientation code, applied by ``datamodules.raw.orient_as_shot``.
    flip: int


def load_packed_normalised(path: Path) -> PackedRaw:
    """The packed, normalised mosaic of any 2x2 Bayer phase (``read_raw(any_bayer_phase=True)``).

    The mosaic starts at the first R site, ``offset`` rows/columns into the file's visible area,
    which the output puts back with :func:`pad_to_visible` so that it keeps the file's full size.
    """
    frame = read_user_raw(path)
    packed = pack_bayer(even_mosaic(frame.mosaic))
    return PackedRaw(normalise(packed, frame.black_level, frame.white_level), frame.shape,
                     frame.offset, frame.flip)


def pad_to_visible(image: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """Put back the top rows/left columns dropped to reach RGGB, repeating the edge (3, H, W)."""
    dy, dx = offset
    if not dy and not dx:
        return image
    return F.pad(image[None], (dx, 0, dy, 0), mode="replicate")[0]


def check_amplification(setting: object) -> str | float:
    """``'estimated'`` or a fixed gain in the trained range, as a float; anything else fails."""
    if isinstance(setting, str) and setting == "estimated":
        return setting
    if isinstance(setting, bool) or not isinstance(setting, int | float):
        raise ConfigError(
            f"amplification={setting!r} is not allowed: use 'estimated' or a number in "
            f"[{MIN_AMPLIFICATION:g}, {MAX_AMPLIFICATION:g}]"
        )
    value = float(setting)
    if not MIN_AMPLIFICATION <= value <= MAX_AMPLIFICATION:
        raise ConfigError(
            f"amplification={value:g} is outside [{MIN_AMPLIFICATION:g}, {MAX_AMPLIFICATION:g}]: "
            "the network was trained on that range"
        )
    return value


#: ``m=trained``: the knob the checkpoint's network was trained at.
TRAINED_M = "trained"


def trained_m(trained_data: Mapping[str, object]) -> tuple[float, str]:
    """The brightness knob a network was trained at, and where that value comes from.

    Lightning stores the data module's settings in the checkpoint: a network trained at
    ``data.m=3`` restores best-exposed images at m=3, not at the paper's 5. A network trained on
    the exposure ratio (``data.amplification=exposure_ratio``) or a checkpoint that records no
    settings (imported from the authors' file) has no trained knob: the paper's m=5 is used.
    """
    m = trained_data.get("m")
    if trained_data.get("amplification") == "estimated" and isinstance(m, int | float) and (
            not isinstance(m, bool)):
        return float(m), f"the checkpoint's data.m={float(m):g}"
    if "amplification" in trained_data:
        return DEFAULT_M, (f"the paper's m={DEFAULT_M:g}: the checkpoint was trained "
                           f"with data.amplification={trained_data['amplification']}")
    return DEFAULT_M, (f"the paper's m={DEFAULT_M:g}: the checkpoint records no "
                       "training settings")


def check_m_values(m_values: Sequence[object]) -> list[float]:
    """The brightness knobs as floats: finite, positive, and each naming its own image.

    ``nan`` and ``inf`` pass a plain ``m <= 0`` test and would give a nan or infinite gain. Two
    values whose file names agree (``1`` and ``1.0``, or ones equal to the 6 digits of
    :func:`format_number`) would write one file twice, the second replacing the first.
    """
    if not m_values:
        raise ConfigError("m=[] holds no value: give one or more positive numbers, e.g. m=5")
    checked: list[float] = []
    named: dict[str, object] = {}
    for m in m_values:
        if (isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m)
                or m <= 0):
            raise ConfigError(f"m={m!r} is not allowed: each m must be a finite positive number")
        label = f"m{format_number(float(m))}"
        if label in named:
            raise ConfigError(
                f"m={list(m_values)} gives m={named[label]!r} and m={m!r} the same image name "
                f"(<file>_{label}.<format>), so one would replace the other: give each value "
                "once (names keep 6 significant digits)"
            )
        named[label] = m
        checked.append(float(m))
    return checked


def check_tiling(tile_size: int | None, tile_overlap: int) -> None:
    """Tiles in packed pixels: a positive multiple of the network's stride, overlap < tile / 2.

    Tiles start at multiples of 16, so neighbours overlap by a multiple of 16 less than the tile:
    a 16 px tile can only butt against its neighbour (overlap 0).
    """
    if tile_size is None:
        return
    if (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size <= 0
            or tile_size % PACKED_MULTIPLE):
        raise ConfigError(
            f"tile_size={tile_size} must be a positive multiple of {PACKED_MULTIPLE} "
            "(or null for the whole image at once)"
        )
    if (isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int)
            or not 0 <= tile_overlap < tile_size // 2):
        raise ConfigError(
            f"tile_overlap={tile_overlap} must be in [0, tile_size / 2) = [0, {tile_size // 2})"
        )
    if tile_overlap > tile_size - PACKED_MULTIPLE:
        raise ConfigError(
            f"tile_overlap={tile_overlap} does not fit tile_size={tile_size}: tiles start at "
            f"multiples of {PACKED_MULTIPLE} packed px, so use tile_size >= "
            f"{2 * PACKED_MULTIPLE} or tile_overlap=0"
        )


#: ``orientation=``: as the camera was held (the file's Orientation tag, as raw converters show
#: it), or as the sensor stored the mosaic (eval.py's and SID's targets' orientation).
AS_SHOT, SENSOR = "as_shot", "sensor"
ORIENTATIONS = (AS_SHOT, SENSOR)


def check_orientation(orientation: object) -> str:
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation={orientation!r} is not allowed: choose one of "
                          f"{list(ORIENTATIONS)} ({AS_SHOT!r}: turned as the camera was held, "
                          f"{SENSOR!r}: as the sensor stored it)")
    return str(orientation)


#: Tiles below the network's training crops (512 px, 256 packed) and overlaps below 32 packed px
#: change the result visibly at tile borders (measured: 256/64 differs from the whole image by
#: 1 level on average and up to 19, 64/16 by 7 and up to 60, overlap 0 by up to 255 at seams).
ADVISED_MIN_TILE, ADVISED_MIN_OVERLAP = 256, 32


def tiling_warning(tile_size: int | None, tile_overlap: int) -> str | None:
    """Why these tiles will show, or None: small tiles are allowed (memory may demand them) but
    never silently, as the seams they leave are visible."""
    if tile_size is None or (tile_size >= ADVISED_MIN_TILE and tile_overlap >= ADVISED_MIN_OVERLAP):
        return None
    return (f"tile_size={tile_size} with tile_overlap={tile_overlap} leaves visible seams in "
            f"images larger than one tile: tiles see less context than the "
            f"{2 * ADVISED_MIN_TILE} px crops the network was trained on, and overlaps below "
            f"{ADVISED_MIN_OVERLAP} packed px blend too little; use tile_size >= "
            f"{ADVISED_MIN_TILE} and tile_overlap >= {ADVISED_MIN_OVERLAP} unless memory forbids")


def check_image_format(image_format: str) -> str:
    """The file extension to write, without its dot; fails for formats write_image cannot do."""
    suffix = str(image_format).lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"format={image_format!r} is not allowed: use png, jpg or tiff")
    return suffix


def amplification_for(packed: np.ndarray, setting: str | float, m: float) -> float:
    """``estimated`` (the paper's histogram amplifier with knob ``m``) or a fixed number."""
    setting = check_amplification(setting)
    if isinstance(setting, str):
        return estimated_amplification(packed, m=m)
    return setting


def gains_and_labels(packed: np.ndarray, setting: str | float,
                     m_values: Sequence[float]) -> list[tuple[float, str]]:
    """One (gain, file-name label) per output image.

    Estimated: one per knob, labelled ``m<m>``. Fixed: ``m`` plays no part, so a single image
    labelled by the gain (``x100``); one per ``m`` would be identical files under wrong names.
    """
    setting = check_amplification(setting)
    if not isinstance(setting, str):
        return [(setting, f"x{format_number(setting)}")]
    return [(estimated_amplification(packed, m=m), f"m{format_number(m)}") for m in m_values]


def pad_to_multiple(x: torch.Tensor, multiple: int = PACKED_MULTIPLE) -> torch.Tensor:
    """Pad the bottom/right of a packed batch to ``multiple``; reflect where the image allows."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def run_padded(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Any packed size in, the matching full-resolution size out."""
    h, w = x.shape[-2:]
    return net(pad_to_multiple(x))[..., : 2 * h, : 2 * w]


def ceil_to_multiple(value: int, multiple: int = PACKED_MULTIPLE) -> int:
    return -(-value // multiple) * multiple


def _spread_spans(length: int, count: int, size: int) -> list[tuple[int, int]]:
    """``count`` tiles of ``size`` (the last one cut at ``length``), starts at multiples of 16
    spread evenly from 0 to the first multiple of 16 from which a tile reaches the end."""
    last = ceil_to_multiple(length - size)
    starts = [PACKED_MULTIPLE * round(i * last / (count - 1) / PACKED_MULTIPLE)
              for i in range(count)]
    return [(start, min(size, length - start)) for start in starts]


def _spans_fit(spans: Sequence[tuple[int, int]], overlap: int) -> bool:
    """Strictly increasing starts and every pair of neighbours sharing at least ``overlap``."""
    return all(b_start > a_start and a_start + a_size - b_start >= overlap
               for (a_start, a_size), (b_start, _) in itertools.pairwise(spans))


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of balanced tiles covering ``length`` packed px, neighbours sharing
    ``>= overlap``.

    Every start is a multiple of 16 (:data:`PACKED_MULTIPLE`): the network is shift-invariant
    only for such shifts, so a tile at any other offset would see (and restore) a differently
    aligned image than the whole-image run does. Every tile but the last is a multiple of 16
    long (no padding); the last ends at ``length`` and is padded like the whole image.

    Balanced: the fewest tiles that cover the length with tiles ``<= tile``, the overlap and
    16-aligned starts, all about the same length, so the extra work is about the overlaps alone.
    Greedy ``tile``-long tiles with the last one pushed back against the end overlap it by up to
    a whole tile (a 1424 x 2128 packed SID frame: 6 tiles of 1024^2, 2.1x its pixels, against 6
    of 752^2, 1.12x, here).
    """
    if length <= tile:
        return [(0, length)]
    count = max(2, math.ceil((length - overlap) / (tile - overlap)))
    while count <= length:
        smallest = ceil_to_multiple(math.ceil((length + (count - 1) * overlap) / count))
        for size in range(min(smallest, tile), tile + 1, PACKED_MULTIPLE):
            spans = _spread_spans(length, count, size)
            if _spans_fit(spans, overlap):
                return spans
        count += 1
    raise ConfigError(  # unreachable after check_tiling: stride 16 always fits
        f"tile_size={tile} with tile_overlap={overlap} cannot cover {length} packed px"
    )


def tile_count(shape: tuple[int, int], tile: int | None, overlap: int) -> int:
    """How many tiles :func:`run_tiled` runs for a packed (h, w): the progress bar's units."""
    if not tile:
        return 1
    return len(tile_spans(shape[0], tile, overlap)) * len(tile_spans(shape[1], tile, overlap))


def blend_ramp(length: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """1-D weights: 1, with linear ramps over the first ``fade_in`` / last ``fade_out`` samples.

    Ramp values are ``(k + 0.5) / n``, never 0, so a pixel that only one tile covers keeps a
    positive weight; where two tiles overlap by exactly the two ramps, they sum to 1.
    """
    weights = torch.ones(length)
    if fade_in > 0:
        weights[:fade_in] = (torch.arange(fade_in, dtype=torch.float32) + 0.5) / fade_in
    if fade_out > 0:
        ramp = ((torch.arange(fade_out, dtype=torch.float32) + 0.5) / fade_out).flip(0)
        weights[-fade_out:] = torch.minimum(weights[-fade_out:], ramp)
    return weights


def axis_weights(spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Full-resolution blend weights of each tile along one axis.

    Overlaps differ between neighbours (starts rounded to multiples of 16), so each side ramps
    over the overlap it actually shares: a cross-fade that sums to 1 across it, and the weight
    falls towards each tile's border, where the network sees the least context.
    """
    weights = []
    for i, (start, size) in enumerate(spans):
        fade_in = 2 * (spans[i - 1][0] + spans[i - 1][1] - start) if i > 0 else 0
        fade_out = 2 * (start + size - spans[i + 1][0]) if i + 1 < len(spans) else 0
        weights.append(blend_ramp(2 * size, fade_in, fade_out))
    return weights


def run_tiled(net: nn.Module, x: torch.Tensor, tile: int, overlap: int,
              on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Restore a packed batch tile by tile (:func:`tile_spans`), blended with linear ramps.

    ``tile`` and ``overlap`` are packed pixels; ``on_tile`` is called after each tile. For a
    network whose outputs depend on inputs at most ``overlap / 2`` packed px away the result
    equals :func:`run_padded` exactly; the real network's deepest encoder sees 1/16 of the
    packed size, so its tiles differ from the whole image near tile borders only, less the
    larger tiles and overlaps are (tiles start at multiples of 16, so away from the borders each
    tile is the whole-image computation, shifted).
    """
    check_tiling(tile, overlap)
    b, _, h, w = x.shape
    if h <= tile and w <= tile:
        out = run_padded(net, x)
        if on_tile is not None:
            on_tile()
        return out
    out = torch.zeros(b, 3, 2 * h, 2 * w, device=x.device)
    weight = torch.zeros(1, 1, 2 * h, 2 * w, device=x.device)
    rows, cols = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    row_weights, col_weights = axis_weights(rows), axis_weights(cols)
    for (y, th), wy in zip(rows, row_weights, strict=True):
        for (x0, tw), wx in zip(cols, col_weights, strict=True):
            piece = run_padded(net, x[..., y:y + th, x0:x0 + tw]).float()
            window = (wy[:, None] * wx[None, :]).to(x.device)
            region = (..., slice(2 * y, 2 * (y + th)), slice(2 * x0, 2 * (x0 + tw)))
            out[region] += piece * window
            weight[region] += window
            if on_tile is not None:
                if x.is_cuda:  # kernels run asynchronously: count a tile once it is done
                    torch.cuda.synchronize(x.device)
                on_tile()
    return out / weight


def to_uint(image: torch.Tensor, bits: int) -> np.ndarray:
    """3 x H x W in [0, 1] -> H x W x 3 integers, rounded."""
    scale = 2**bits - 1
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * scale).round()
    return array.astype(np.uint8 if bits == 8 else np.uint16)


def write_image(image: torch.Tensor, path: Path, quality: int = 95) -> Path:
    """PNG/JPEG (8 bit) or TIFF (16 bit), chosen by the file extension.

    A failed write (disk full, folder removed meanwhile) is a DataError naming the file, so that
    a folder run reports it and goes on with the next file.
    """
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        check_image_format(suffix)  # raises: the one message for every unsupported format
    try:
        # A Ctrl-C or full disk mid-write leaves no truncated image under the real name.
        with replaced_when_complete(path) as partial:
            if suffix in (".tif", ".tiff"):
                import tifffile

                tifffile.imwrite(partial, to_uint(image, 16))
            else:
                from PIL import Image

                Image.fromarray(to_uint(image, 8)).save(
                    partial, format="PNG" if suffix == ".png" else "JPEG", quality=quality)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}; check the free space "
                        f"and permissions of {path.parent}") from error
    return path


def format_number(value: float) -> str:
    """A knob or gain as a file-name part without a second dot: 2.5 -> 2p5, 100.0 -> 100."""
    return f"{value:g}".replace(".", "p")


class Reporter:
    """What a restore run tells its user; this base says nothing (library use, tests)."""

    def reading(self, path: Path) -> None:
        """``path`` is being decoded."""

    def restoring(self, path: Path, images: int, tiles: int) -> None:
        """``path`` decoded: ``images`` output images of ``tiles`` network runs each follow."""

    def advance(self) -> None:
        """One network run (a tile of one output image) is done."""

    def written(self, path: Path, gain: float) -> None:
        """An output image is on disk."""

    def failed(self, path: Path, error: DarkrawError) -> None:
        """``path`` could not be restored and is skipped."""

    def warning(self, message: str) -> None:
        """Something the user should know about the images being written."""

    def file_done(self) -> None:
        """The current input file is finished, restored or not."""


def amplifier_limit_warnings(path: Path, m_values: Sequence[float],
                             gains: Sequence[float]) -> list[str]:
    """A line for each knob whose gain the amplifier clamped to its trained range.

    ``m=1000`` and ``m=2000`` otherwise write two identical images under different names with
    nothing to say why (a very dark or black file reaches the upper limit at any m).
    """
    lines = []
    for m, gain in zip(m_values, gains, strict=True):
        if gain >= MAX_AMPLIFICATION or gain <= MIN_AMPLIFICATION:
            limit, beyond = ("upper", "larger") if gain >= MAX_AMPLIFICATION else (
                "lower", "smaller")
            lines.append(
                f"{path.name}: m={m:g} reaches the amplifier's {limit} limit, x{gain:g} (the "
                f"range the network was trained on is [{MIN_AMPLIFICATION:g}, "
                f"{MAX_AMPLIFICATION:g}]): a {beyond} m gives the same image"
            )
    return lines


def nonfinite_output_error(path: Path, gain: float,
                           autocast_dtype: torch.dtype | None) -> DataError:
    """Why an output holds NaN or inf, which ``to_uint`` would silently write as black."""
    if autocast_dtype == torch.float16:
        advice = ("fp16 overflows on this network's activations at this brightness: use "
                  "precision=bf16 or precision=32")
    else:
        advice = ("the network computed NaN or inf from this file; restore it with precision=32 "
                  "on the CPU to check, and report it with the file if that fails too")
    return DataError(f"the restoration of {path} at amplification x{gain:.1f} holds NaN or inf "
                     f"values (it would be written black): {advice}")


@torch.inference_mode()
def restore_file(net: nn.Module, path: Path, output_dir: Path, *, m_values: Sequence[float],
                 amplification: str | float, image_format: str, tile_size: int | None,
                 tile_overlap: int, device: torch.device,
                 autocast_dtype: torch.dtype | None = None,
                 orientation: str = AS_SHOT,
                 reporter: Reporter | None = None,
                 stem: str | None = None) -> list[tuple[Path, float]]:
    """Restore one raw file once per output of :func:`gains_and_labels`.

    Each image has the file's full visible size, turned as the camera was held
    (``orientation="as_shot"``, LibRaw's reading of the file's Orientation tag) or left as the
    sensor stored it (``"sensor"``, as eval.py and SID's targets), is named
    ``<stem>_<label>.<image_format>`` (``stem``: the file's own unless :func:`output_stems`
    chose another) and is reported as soon as it is written. Returns (written file, gain) pairs.
    """
    reporter = reporter or Reporter()
    reporter.reading(path)
    raw = load_packed_normalised(path)
    height, width = raw.shape
    outputs = gains_and_labels(raw.packed, amplification, m_values)
    if isinstance(check_amplification(amplification), str):
        for line in amplifier_limit_warnings(path, m_values, [gain for gain, _ in outputs]):
            reporter.warning(line)
    reporter.restoring(path, len(outputs),
                       tile_count(raw.packed.shape[-2:], tile_size, tile_overlap))
    x = torch.from_numpy(raw.packed)[None].to(device)
    flip = raw.flip if check_orientation(orientation) == AS_SHOT else 0
    written = []
    for gain, label in outputs:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            if tile_size:
                restored = run_tiled(net, x * gain, tile_size, tile_overlap,
                                     on_tile=reporter.advance)
            else:
                restored = run_padded(net, x * gain)
                reporter.advance()
        image = pad_to_visible(restored[0, :, :height, :width].float(), raw.offset)
        if not bool(torch.isfinite(image).all()):
            raise nonfinite_output_error(path, gain, autocast_dtype)
        target = output_dir / f"{stem or path.stem}_{label}.{image_format}"
        written.append((write_image(orient_as_shot(image, flip), target), gain))
        reporter.written(target, gain)
    return written


@dataclass
class RestoreReport:
    """What a run over several files did: the images written and the files that failed."""

    files: int
    written: list[tuple[Path, float]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def failure_message(self) -> str:
        """One line: how many failed and why, the first few by name (all are in the warnings)."""
        listed = [f"{path.name} ({reason.rstrip('.')})"
                  for path, reason in self.failed[:MAX_FAILURES_LISTED]]
        more = len(self.failed) - len(listed)
        tail = f", and {more} more (see the warnings above)" if more else ""
        return (f"{len(self.failed)} of {self.files} files could not be restored: "
                f"{', '.join(listed)}{tail}")


def short_reason(path: Path, error: DarkrawError) -> str:
    """The error's message with the file's full path shortened to its name (listed beside it)."""
    return str(error).replace(str(path), path.name)


def restore_all(net: nn.Module, files: Iterable[Path], output_dir: Path, *,
                reporter: Reporter | None = None, skip_failures: bool = True,
                **options: object) -> RestoreReport:
    """Every file in turn; settings are checked by the caller beforehand.

    With ``skip_failures`` a file that cannot be read or written (a user error: corrupt,
    unsupported layout, disk full) is reported, skipped and listed in the report, and the other
    files are still restored; without, its error propagates (a single input file). Anything
    else is a bug and propagates either way. Images are named by :func:`output_stems`, so files
    sharing a stem never overwrite each other's images.
    """
    reporter = reporter or Reporter()
    files = list(files)
    stems = output_stems(files)
    report = RestoreReport(files=len(files))
    for path in files:
        try:
            report.written.extend(
                restore_file(net, path, output_dir, reporter=reporter, stem=stems[path],
                             **options)  # type: ignore[arg-type]
            )
        except DarkrawError as error:
            if not skip_failures:
                raise
            report.failed.append((path, short_reason(path, error)))
            reporter.failed(path, error)
        finally:
            reporter.file_done()
    return report


class ConsoleReporter(Reporter, AbstractContextManager["ConsoleReporter"]):
    """Progress bars on stderr, each written image on stdout as soon as it exists.

    stdout lists only the written files (``restore.py ... > written.txt`` captures exactly
    them), so the bars and warnings go to stderr. The bars advance per tile of each output image,
    so even a single large file shows it is working; with several files a second bar counts them.
    """

    def __init__(self, files: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True, soft_wrap=True, highlight=False, markup=False,
                               emoji=False)
        # Printing to stdout while a bar is live on the same terminal would tear the bar, so
        # then rich prints stdout above the bar; a piped stdout is left alone. A stderr that is
        # not a terminal (a log file) gets no bars at all, only the warnings: transient bars
        # leave nothing there but rich's blank line at their end.
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            redirect_stdout=_isatty(sys.stdout), disable=not self.console.is_interactive,
        )
        self.files_task = (self.progress.add_task("files", total=files) if files > 1 else None)
        self.file_task = self.progress.add_task("", total=None)
        self.images_written = 0

    def __enter__(self) -> ConsoleReporter:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.progress.stop()

    def reading(self, path: Path) -> None:
        self.progress.reset(self.file_task, total=None, description=f"reading {path.name}")

    def restoring(self, path: Path, images: int, tiles: int) -> None:
        self.progress.reset(self.file_task, total=images * tiles,
                            description=f"restoring {path.name} ({images} image(s) x {tiles} "
                                        "tile(s))")

    def advance(self) -> None:
        self.progress.advance(self.file_task)

    def written(self, path: Path, gain: float) -> None:
        self.images_written += 1
        print(f"{path}  (amplification x{gain:.1f})", flush=True)

    def failed(self, path: Path, error: DarkrawError) -> None:
        self.console.print(f"darkraw: warning: skipped {path}: {error}")

    def warning(self, message: str) -> None:
        self.console.print(f"darkraw: warning: {message}")

    def file_done(self) -> None:
        if self.files_task is not None:
            self.progress.advance(self.files_task)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


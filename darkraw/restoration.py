"""Restoring whole raw files of any size: padding, overlapping tiles, amplification, writing.

Training sees only multiples of 32 and 512 px crops; users bring arbitrary camera files. Sizes
are padded (reflect, in the packed domain, so the Bayer channels keep their meaning) and cropped
back, and images too large for memory run in overlapping tiles blended with linear ramps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darkraw.errors import ConfigError, DataError
from datamodules.amplification import MAX_AMPLIFICATION, MIN_AMPLIFICATION, estimated_amplification
from datamodules.raw import normalise, pack_bayer, read_raw

RAW_EXTENSIONS = (".arw", ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".orf", ".rw2", ".pef", ".srw",
                  ".raw", ".rwl", ".3fr", ".iiq", ".erf", ".mos", ".kdc", ".dcr")
PACKED_MULTIPLE = 16
IMAGE_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff")


def find_raw_files(source: str | Path) -> list[Path]:
    """The raw file itself, or every raw file (by extension) directly inside a folder."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"input={source} does not exist: give a raw file or a folder of them")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in RAW_EXTENSIONS)
    if not files:
        raise DataError(
            f"input={source} holds no raw files (looked for {', '.join(RAW_EXTENSIONS)})"
        )
    return files


def even_mosaic(mosaic: np.ndarray) -> np.ndarray:
    """Make both sides even by repeating the row/column two back (same Bayer colour)."""
    if mosaic.shape[0] % 2:
        mosaic = np.concatenate([mosaic, mosaic[-2:-1]], axis=0)
    if mosaic.shape[1] % 2:
        mosaic = np.concatenate([mosaic, mosaic[:, -2:-1]], axis=1)
    return mosaic


def load_packed_normalised(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Packed (4, h, w) float32 in [0, 1] and the file's full (H, W), which the output keeps."""
    frame = read_raw(path, multiple=1)
    packed = pack_bayer(even_mosaic(frame.mosaic))
    return normalise(packed, frame.black_level, frame.white_level), frame.shape


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


def check_m_values(m_values: Sequence[object]) -> list[float]:
    """The brightness knobs as floats; each must be a positive number."""
    if not m_values:
        raise ConfigError("m=[] holds no value: give one or more positive numbers, e.g. m=5")
    checked = []
    for m in m_values:
        if isinstance(m, bool) or not isinstance(m, int | float) or m <= 0:
            raise ConfigError(f"m={m!r} is not allowed: each m must be a positive number")
        checked.append(float(m))
    return checked


def check_tiling(tile_size: int | None, tile_overlap: int) -> None:
    """Tiles in packed pixels: a positive multiple of the network's stride, overlap < tile / 2."""
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


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def blend_ramp(length: int, ramp: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D weights: linear ramps over ``ramp`` samples on the sides that overlap a neighbour."""
    weights = torch.ones(length)
    if ramp > 0:
        ramp_values = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if fade_in:
            weights[:ramp] = ramp_values
        if fade_out:
            weights[-ramp:] = ramp_values.flip(0)
    return weights


def run_tiled(net: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Restore a packed batch tile by tile; the output equals :func:`run_padded` away from seams.

    ``tile`` and ``overlap`` are packed pixels. The network sees 1/16 of the packed size in its
    deepest encoder, so overlaps of a few multiples of 16 keep the seams invisible.
    """
    check_tiling(tile, overlap)
    b, _, h, w = x.shape
    if h <= tile and w <= tile:
        return run_padded(net, x)
    out = torch.zeros(b, 3, 2 * h, 2 * w, device=x.device)
    weight = torch.zeros(1, 1, 2 * h, 2 * w, device=x.device)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, h - y), min(tile, w - x0)
            piece = run_padded(net, x[..., y:y + th, x0:x0 + tw]).float()
            wy = blend_ramp(2 * th, 2 * overlap, y > 0, y + th < h)
            wx = blend_ramp(2 * tw, 2 * overlap, x0 > 0, x0 + tw < w)
            window = (wy[:, None] * wx[None, :]).to(x.device)
            region = (..., slice(2 * y, 2 * (y + th)), slice(2 * x0, 2 * (x0 + tw)))
            out[region] += piece * window
            weight[region] += window
    return out / weight


def to_uint(image: torch.Tensor, bits: int) -> np.ndarray:
    """3 x H x W in [0, 1] -> H x W x 3 integers, rounded."""
    scale = 2**bits - 1
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * scale).round()
    return array.astype(np.uint8 if bits == 8 else np.uint16)


def write_image(image: torch.Tensor, path: Path, quality: int = 95) -> Path:
    """PNG/JPEG (8 bit) or TIFF (16 bit), chosen by the file extension."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, to_uint(image, 16))
        return path
    from PIL import Image

    if suffix not in (".png", ".jpg", ".jpeg"):
        check_image_format(suffix)  # raises: the one message for every unsupported format
    Image.fromarray(to_uint(image, 8)).save(path, quality=quality)
    return path


def format_number(value: float) -> str:
    """A knob or gain as a file-name part without a second dot: 2.5 -> 2p5, 100.0 -> 100."""
    return f"{value:g}".replace(".", "p")


@torch.inference_mode()
def restore_file(net: nn.Module, path: Path, output_dir: Path, *, m_values: Sequence[float],
                 amplification: str | float, image_format: str, tile_size: int | None,
                 tile_overlap: int, device: torch.device,
                 autocast_dtype: torch.dtype | None = None) -> list[tuple[Path, float]]:
    """Restore one raw file once per output of :func:`gains_and_labels`.

    Returns (written file, gain) pairs.
    """
    packed, (height, width) = load_packed_normalised(path)
    x = torch.from_numpy(packed)[None].to(device)
    written = []
    for gain, label in gains_and_labels(packed, amplification, m_values):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            if tile_size:
                restored = run_tiled(net, x * gain, tile_size, tile_overlap)
            else:
                restored = run_padded(net, x * gain)
        target = output_dir / f"{path.stem}_{label}.{image_format}"
        image = restored[0, :, :height, :width].float()
        written.append((write_image(image, target), gain))
    return written


def restore_all(net: nn.Module, files: Iterable[Path], output_dir: Path,
                **options: object) -> list[tuple[Path, float]]:
    """Every file in turn, with a progress bar; settings are checked by the caller beforehand."""
    from rich.progress import track

    files = list(files)
    results: list[tuple[Path, float]] = []
    for path in track(files, description="restoring", disable=len(files) < 2):
        results.extend(restore_file(net, path, output_dir, **options))  # type: ignore[arg-type]
    return results

"""A small SID-style dataset generated on the spot: darkraw's default data, with no 25 GB download.

The files are real Bayer DNGs laid out exactly like SID Sony (``Sony/short``, ``Sony/long``, the
three list files, SID's names and scene-id splits), so they exercise the same reader, cache and
training code as the real set. Scenes are colour photographs shipped with scikit-image, turned
into linear camera RGB; each short exposure is simulated from the long one with a physical noise
model (photon shot noise, read noise, row noise, quantisation, black level, clipping), so a model
trained here faces the same kind of problem as on SID, only much smaller.

Usage: ``python -m datamodules.synthetic --root data/synthetic_sid [--num-train-scenes N ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from darkraw.disk import ensure_free_space
from darkraw.errors import ConfigError, DarkrawError, DataError
from datamodules.dng import TMP_SUFFIX, atomic_write_bytes, write_bayer_dng

log = logging.getLogger(__name__)

#: SID Sony (a7S II) levels, so that the normalisation code sees the numbers it sees on SID.
BLACK_LEVEL = 512
WHITE_LEVEL = 16383

#: Raw R, G, B response of the camera to a white surface (inverse white balance), roughly a
#: Sony a7S II in daylight; each scene jitters R and B by up to ``NEUTRAL_JITTER`` (relative) so
#: that the camera white balance of the ground truths varies as it does on SID.
CAMERA_NEUTRAL = (0.5, 1.0, 0.6)
NEUTRAL_JITTER = 0.1

#: Exposure time of every ground truth; SID's are 10 s (and some 30 s).
LONG_EXPOSURE_S = 10.0

#: Photometric metadata written to the files and the list lines (labels only: the simulation
#: works in raw numbers, see ``simulate_short_exposure``).
ISO = 200
F_NUMBER = "F8"

#: Noise model of the short exposures (DN are 14-bit raw units above the black level).
GAIN_DN_PER_ELECTRON = 1.0
READ_NOISE_DN = 2.0
ROW_NOISE_DN = 0.5

#: The long exposure's brightest scene content (99.5th percentile of the brightest channel) lands
#: at this fraction of the raw range, drawn per scene: well exposed, with few clipped pixels.
EXPOSURE_RANGE = (0.6, 0.9)
BRIGHT_PERCENTILE = 99.5

#: Random crops cover this fraction (per side) of the largest window of the right aspect ratio.
CROP_SCALE_RANGE = (0.6, 1.0)

#: A short exposure's name must give back its ratio (``min(long / short, 300)``) this closely;
#: names are rounded to the fewest decimals within ``NAME_ROUNDING`` (SID writes 0.033 for 1/30).
NAME_RATIO_TOLERANCE = 0.02
NAME_ROUNDING = 0.015
MAX_RATIO = 300

#: Smallest image side: the network downsamples by 32.
MIN_SIDE = 32
MAX_SCENES_PER_SPLIT = 9999

#: First digit of the 5-digit scene ids of each split (SID's convention).
SPLIT_PREFIX = {"train": "0", "val": "2", "test": "1"}
LIST_FILES = {
    "train": "Sony_train_list.txt",
    "val": "Sony_val_list.txt",
    "test": "Sony_test_list.txt",
}

MARKER_NAME = ".darkraw_synthetic.json"
LOCK_NAME = ".darkraw_synthetic.lock"
#: Written before the first file of a set and never removed: a folder holding raw files or list
#: files but neither this nor the marker was not made by the generator, which must not touch it.
OWNER_NAME = ".darkraw_synthetic.owner"
#: Bump when the output changes for the same parameters, so existing sets are regenerated.
FORMAT_VERSION = 1

#: DNG header and tags on top of the 16-bit pixels, rounded up generously.
DNG_OVERHEAD_BYTES = 8192
#: Free space kept on top of the estimate (list files, file-system slack).
DISK_MARGIN_BYTES = 16 * 1024**2

#: Colour photographs that ship inside scikit-image (no pooch download needed); darker
#: astronomical/medical images are left out because they would be almost black after scaling.
SOURCE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")


class SyntheticLayoutError(DataError):
    """The target folder holds files that the generator did not write and will not delete."""


@dataclass(frozen=True)
class Shot:
    """One short exposure of a scene: its file name and the exposure ratio it simulates."""

    name: str
    ratio: float
    exposure: float


@dataclass(frozen=True)
class Scene:
    """One scene: an id that fixes its split, its ground-truth file and its short shots."""

    split: str
    scene_id: str
    ordinal: int
    long_name: str
    shots: tuple[Shot, ...]


# --------------------------------------------------------------------------------------------
# Names


def format_exposure(seconds: float) -> str:
    """SID-style exposure string ("10", "0.1", "0.04", "0.033"): fewest decimals within 1.5 %."""
    if seconds <= 0:
        raise ConfigError(f"exposure time must be positive, got {seconds} s")
    for decimals in range(8):
        text = f"{seconds:.{decimals}f}"
        value = float(text)
        if value > 0 and abs(value - seconds) <= NAME_ROUNDING * seconds:
            return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{seconds:.6g}"


def _check_ratio_survives_name(ratio: float, long_exposure: float, short_text: str) -> None:
    """The reader derives the ratio from names: refuse a name that would give a different one."""
    expected = min(ratio, MAX_RATIO)
    got = min(long_exposure / float(short_text), MAX_RATIO)
    if abs(got - expected) > NAME_RATIO_TOLERANCE * expected:
        raise ConfigError(
            f"ratio {ratio} with a {long_exposure} s ground truth gives a {short_text} s file "
            f"name, from which the reader would compute ratio {got:.3g}; choose another ratio"
        )


def _shot_ratios(ratios: Sequence[float], ordinal: int, shots: int) -> list[float]:
    """Shot 0 always uses ``ratios[0]`` (SID: every scene has its ``_00_`` 0.1 s shot, which the
    authors' subset needs); later shots cycle through the other ratios, offset per scene so that
    every ratio appears even with two shots per scene."""
    if len(ratios) == 1:
        return [ratios[0]] * shots
    rest = ratios[1:]
    return [ratios[0]] + [rest[(ordinal + j - 1) % len(rest)] for j in range(1, shots)]


def _make_scene(
    split: str, index: int, ordinal: int, ratios: Sequence[float], shots: int, long_exposure: float
) -> Scene:
    scene_id = f"{SPLIT_PREFIX[split]}{index + 1:04d}"
    long_text = format_exposure(long_exposure)
    taken: dict[str, int] = {}
    planned = []
    for ratio in _shot_ratios(ratios, ordinal, shots):
        text = format_exposure(long_exposure / ratio)
        _check_ratio_survives_name(ratio, long_exposure, text)
        index_in_exposure = taken.get(text, 0)
        taken[text] = index_in_exposure + 1
        planned.append(
            Shot(f"{scene_id}_{index_in_exposure:02d}_{text}s.dng", ratio, long_exposure / ratio)
        )
    return Scene(split, scene_id, ordinal, f"{scene_id}_00_{long_text}s.dng", tuple(planned))


def plan_scenes(
    counts: dict[str, int], ratios: Sequence[float], shots: int, long_exposure: float
) -> list[Scene]:
    """Every scene of every split with its file names, in a fixed order (the seed's order)."""
    scenes: list[Scene] = []
    for split in ("train", "val", "test"):
        for index in range(counts[split]):
            scenes.append(_make_scene(split, index, len(scenes), ratios, shots, long_exposure))
    return scenes


# --------------------------------------------------------------------------------------------
# Scene content


@functools.lru_cache(maxsize=len(SOURCE_IMAGES))
def _source_image(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as float32 sRGB in [0, 1], HxWx3."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim != 3 or image.shape[2] < 3:
        raise DataError(f"skimage.data.{name}() is not a colour image (shape {image.shape})")
    return image[..., :3].astype(np.float32) / 255.0


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer function: photographs are gamma-encoded, sensors are linear."""
    srgb = np.clip(srgb, 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _random_view(
    image: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A random crop of ``image`` with the target aspect ratio, resized to ``height x width``.

    Pillow's float ("F") resampling widens its filter when shrinking (anti-aliasing) and is ~10x
    faster than scikit-image's resize, which dominated the generation time.
    """
    from PIL import Image

    src_h, src_w = image.shape[:2]
    aspect = width / height
    full_h = min(src_h, src_w / aspect)
    crop_h = max(2, round(full_h * rng.uniform(*CROP_SCALE_RANGE)))
    crop_w = max(2, min(src_w, round(crop_h * aspect)))
    top = int(rng.integers(0, src_h - crop_h + 1))
    left = int(rng.integers(0, src_w - crop_w + 1))
    box = (left, top, left + crop_w, top + crop_h)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.Resampling.BICUBIC, box=box
            )
        )
        for c in range(3)
    ]
    view = np.stack(channels, axis=-1)
    return np.ascontiguousarray(view[:, ::-1]) if rng.random() < 0.5 else view


def scene_neutral(rng: np.random.Generator) -> tuple[float, float, float]:
    """The scene's as-shot neutral: the camera's, with R and B jittered (a new illuminant)."""
    red, green, blue = CAMERA_NEUTRAL
    jitter = rng.uniform(1 - NEUTRAL_JITTER, 1 + NEUTRAL_JITTER, size=2)
    return (float(red * jitter[0]), float(green), float(blue * jitter[1]))


def mosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    """Sample an HxWx3 image on the RGGB Bayer grid of the Sony a7S II."""
    mosaic = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def scene_signal(
    ordinal: int,
    height: int,
    width: int,
    neutral: tuple[float, float, float],
    rng: np.random.Generator,
    white_range: float = WHITE_LEVEL - BLACK_LEVEL,
) -> np.ndarray:
    """Noise-free long-exposure signal of a scene, float32 RGGB mosaic in DN above black.

    The photograph is linearised, then multiplied by the as-shot neutral (the inverse of the white
    balance the DNG declares), so that LibRaw's camera-WB rendering gives the photograph back.
    """
    linear = srgb_to_linear(_random_view(_source_image(SOURCE_IMAGES[ordinal % len(SOURCE_IMAGES)]),
                                         height, width, rng))
    camera = linear * np.asarray(neutral, dtype=np.float32)
    bright = float(np.percentile(camera.max(axis=2), BRIGHT_PERCENTILE))
    scale = rng.uniform(*EXPOSURE_RANGE) * white_range / max(bright, 1e-6)
    return (mosaic_rggb(camera) * scale).astype(np.float32)


def quantise(values: np.ndarray, black_level: int, white_level: int) -> np.ndarray:
    """Raw DN as a camera stores them: rounded, offset by the black level, clipped."""
    return np.clip(np.rint(values + black_level), 0, white_level).astype(np.uint16)


def simulate_short_exposure(
    signal: np.ndarray,
    ratio: float,
    rng: np.random.Generator,
    *,
    gain: float = GAIN_DN_PER_ELECTRON,
    read_noise: float = READ_NOISE_DN,
    row_noise: float = ROW_NOISE_DN,
    black_level: int = BLACK_LEVEL,
    white_level: int = WHITE_LEVEL,
) -> np.ndarray:
    """Raw mosaic (uint16) of the same scene exposed ``ratio`` times shorter.

    ``signal`` is the long exposure's noise-free value in DN above black. The short one collects
    ``signal / ratio / gain`` photo-electrons on average; photon arrival is Poisson, the readout
    adds Gaussian noise per pixel and a Gaussian offset per row (banding), then the ADC rounds,
    adds the black level and clips. Variance therefore grows linearly with signal
    (``gain * mean + read_noise**2 + row_noise**2``), as on real sensors.
    """
    if ratio <= 0 or gain <= 0:
        raise ConfigError(f"ratio and gain must be positive, got ratio={ratio}, gain={gain}")
    electrons = rng.poisson(np.maximum(signal, 0.0) / (ratio * gain))
    values = electrons.astype(np.float32) * np.float32(gain)
    values += rng.normal(0.0, read_noise, size=signal.shape).astype(np.float32)
    values += rng.normal(0.0, row_noise, size=(signal.shape[0], 1)).astype(np.float32)
    return quantise(values, black_level, white_level)


# --------------------------------------------------------------------------------------------
# Files on disk


def _parameters(**kwargs: Any) -> dict[str, Any]:
    """Everything that decides the output, JSON-normalised (tuples become lists) for comparing."""
    params = {
        "format_version": FORMAT_VERSION,
        "black_level": BLACK_LEVEL,
        "white_level": WHITE_LEVEL,
        "camera_neutral": CAMERA_NEUTRAL,
        "neutral_jitter": NEUTRAL_JITTER,
        "source_images": SOURCE_IMAGES,
        **kwargs,
    }
    return json.loads(json.dumps(params))


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """A finished set with the same parameters whose files are all still there."""
    marker = _read_marker(root)
    if marker is None or marker.get("parameters") != params:
        return False
    return all((root / relpath).is_file() for relpath in marker.get("files", []))


def _other_settings(root: Path, params: dict[str, Any]) -> tuple[str, str] | None:
    """``(asked, there)`` when ``root`` holds a set generated with other user settings: the
    settings asked for and the set's own, as overrides; None otherwise.

    User settings are the generator's own keyword arguments (``data.synthetic.*``); the other
    parameters (format version, levels, source images) are the code's: a set that differs in
    those only is regenerated without a word (a newer darkraw).
    """
    marker = _read_marker(root)
    existing = (marker or {}).get("parameters")
    if not isinstance(existing, dict):
        return None
    settings = inspect.signature(generate_synthetic_sid).parameters
    differ = [key for key in settings
              if key in existing and key in params and existing[key] != params[key]]
    if not differ:
        return None
    asked = ", ".join(f"data.synthetic.{key}={params.get(key)!r}" for key in differ)
    there = " ".join(f"data.synthetic.{key}={override_value(existing[key])}" for key in differ)
    return asked, there


def _refuse_other_set(root: Path, params: dict[str, Any]) -> None:
    """Raise when ``root`` holds a set generated with other user settings than ``params``."""
    other = _other_settings(root, params)
    if other is None:
        return
    asked, there = other
    raise ConfigError(
        f"data.root={root} holds the synthetic set generated with other settings than {asked}; "
        f"it is not replaced here: pass {there} to score that set, or another data.root to "
        "generate one with these settings"
    )


def _say_replacing_other_set(root: Path, params: dict[str, Any]) -> None:
    """Training regenerates a set for the settings it is given; a set made by hand (``python -m
    datamodules.synthetic --seed 1``, a larger one) went without a word."""
    other = _other_settings(root, params)
    if other is not None:
        asked, there = other
        log.warning("data.root=%s holds a synthetic set generated with %s: replacing it with "
                    "one for %s (pass %s, or another data.root, to keep a set)", root, there,
                    asked, there)


def override_value(value: Any) -> str:
    """``value`` as a Hydra command-line value (lists without spaces)."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)


def _own_files(folder: Path) -> Iterator[Path]:
    """Files of ``folder`` that a previous (possibly interrupted) generation may have written.

    Anything else that looks like a raw file means the folder holds real data: refuse to touch it.
    """
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            continue
        if path.suffix.lower() == ".dng" or path.name.endswith(TMP_SUFFIX):
            yield path
        elif not path.name.startswith("."):
            raise SyntheticLayoutError(
                f"{path} was not written by darkraw's synthetic generator, so "
                f"{folder.parent.parent} looks like a real dataset. The generator deletes and "
                "rewrites that folder: point it to an empty or synthetic-only folder instead "
                "(e.g. data/synthetic_sid)."
            )


def _check_ours(root: Path) -> None:
    """Refuse a folder with data the generator did not write: it deletes and rewrites the set.

    SID's own download is DNG-free (ARW), but a converted copy, or any SID-style tree of DNGs,
    would otherwise be replaced without a word, e.g. when a machine-wide ``data.root`` meant for
    ``data=sid`` also reaches the default synthetic data. Any other entry counts as well (hidden
    ones aside): ``data.root=~`` would have put ``Sony/`` and three list files among them.
    """
    if (root / MARKER_NAME).is_file() or (root / OWNER_NAME).is_file():
        return
    found = [path for folder in (root / "Sony" / "short", root / "Sony" / "long")
             if folder.is_dir() for path in sorted(folder.iterdir())
             if not path.name.startswith(".")]
    found += [root / name for name in LIST_FILES.values() if (root / name).exists()]
    # Anything else in the folder too: the set's files would be written among someone's data
    # (data.root=~ or a project folder), and later deleted and rewritten there.
    own = {"Sony", *LIST_FILES.values()}
    for folder, expected in ((root, own), (root / "Sony", {"short", "long"})):
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        found += [path for path in entries
                  if path.name not in expected and not path.name.startswith(".")]
    if found:
        raise SyntheticLayoutError(
            f"{found[0]}{f' (and {len(found) - 1} more files)' if len(found) > 1 else ''} "
            "was not written by darkraw's "
            f"synthetic generator, so {root} looks like a real dataset or other data. The "
            "generator deletes and rewrites its folder: point the synthetic data's root to an "
            "empty or synthetic-only folder (data.root, by default data/synthetic_sid); for a "
            "real SID tree use data=sid (machine-wide: paths.sid_root in conf/local/default.yaml)."
        )


def _remove_stale(root: Path) -> None:
    """Delete a previous set first; the marker goes first so a crash never leaves it valid."""
    folders = [root / "Sony" / "short", root / "Sony" / "long"]
    stale = [path for folder in folders for path in _own_files(folder)]
    (root / MARKER_NAME).unlink(missing_ok=True)
    for name in LIST_FILES.values():
        (root / name).unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """Serialise generators sharing ``root`` (parallel sweep jobs all preparing the default data):
    without it one job could delete the files another has just written and is reading."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, generate unguarded
        yield
        return
    with open(root / LOCK_NAME, "a") as handle:
        with contextlib.suppress(OSError):  # e.g. NFS without lock support: best effort
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _bytes_needed(num_scenes: int, shots: int, height: int, width: int) -> int:
    files = num_scenes * (shots + 1)
    return files * (height * width * 2 + DNG_OVERHEAD_BYTES) + DISK_MARGIN_BYTES


def _list_line(scene: Scene, shot: Shot) -> str:
    return f"./Sony/short/{shot.name} ./Sony/long/{scene.long_name} ISO{ISO} {F_NUMBER}"


def _write_scene(
    root: Path, scene: Scene, *, seed: int, height: int, width: int, long_exposure: float,
    noise: dict[str, float],
) -> None:
    """Both exposures of one scene; seeded by (seed, scene) so order and subsets do not matter."""
    rng = np.random.default_rng([seed, scene.ordinal])
    neutral = scene_neutral(rng)
    signal = scene_signal(scene.ordinal, height, width, neutral, rng)
    common = {"black_level": BLACK_LEVEL, "white_level": WHITE_LEVEL, "iso": ISO,
              "as_shot_neutral": neutral}
    write_bayer_dng(root / "Sony" / "long" / scene.long_name,
                    quantise(signal, BLACK_LEVEL, WHITE_LEVEL), exposure_time=long_exposure,
                    **common)
    for number, shot in enumerate(scene.shots):
        shot_rng = np.random.default_rng([seed, scene.ordinal, number + 1])
        short = simulate_short_exposure(signal, shot.ratio, shot_rng, **noise)
        write_bayer_dng(root / "Sony" / "short" / shot.name, short, exposure_time=shot.exposure,
                        **common)


def _write_lists(root: Path, scenes: Sequence[Scene]) -> list[str]:
    for split, name in LIST_FILES.items():
        lines = [_list_line(s, shot) for s in scenes if s.split == split for shot in s.shots]
        atomic_write_bytes(root / name, ("\n".join(lines) + "\n").encode("ascii"))
    return list(LIST_FILES.values())


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="darkraw synthetic SID", unit="scene", disable=not enabled)


def _validate(
    counts: dict[str, int], height: int, width: int, ratios: Sequence[float], shots: int,
    long_exposure: float, noise: dict[str, float],
) -> None:
    for split, count in counts.items():
        if not 1 <= count <= MAX_SCENES_PER_SPLIT:
            raise ConfigError(f"num_{split}_scenes={count}: need 1..{MAX_SCENES_PER_SPLIT} "
                              "(every split needs a scene; SID ids have 4 digits after the prefix)")
    for side, value in (("height", height), ("width", width)):
        if value < MIN_SIDE or value % 2:
            raise ConfigError(f"{side}={value}: must be even (whole Bayer 2x2 cells) and at least "
                              f"{MIN_SIDE} (the network downsamples by 32)")
    if not ratios or any(not r >= 1 for r in ratios):
        raise ConfigError(f"ratios={list(ratios)}: need at least one exposure ratio, each >= 1")
    if shots < 1:
        raise ConfigError(f"shots_per_scene={shots}: need at least one short shot per scene")
    if not long_exposure > 0 or not noise["gain"] > 0:
        raise ConfigError(f"long_exposure={long_exposure} s and gain={noise['gain']} must be "
                          "positive")
    for key in ("read_noise", "row_noise"):
        if not noise[key] >= 0:
            raise ConfigError(f"{key}={noise[key]}: a noise standard deviation must be >= 0 DN")


def generate_synthetic_sid(
    root: str | Path,
    *,
    num_train_scenes: int = 8,
    num_val_scenes: int = 2,
    num_test_scenes: int = 2,
    height: int = 512,
    width: int = 768,
    ratios: Sequence[int] = (100, 250, 300),
    shots_per_scene: int = 2,
    seed: int = 0,
    progress: bool = True,
    long_exposure: float = LONG_EXPOSURE_S,
    gain: float = GAIN_DN_PER_ELECTRON,
    read_noise: float = READ_NOISE_DN,
    row_noise: float = ROW_NOISE_DN,
    replace_other_set: bool = True,
) -> Path:
    """Write (or reuse) a SID-style set of DNGs under ``root`` and return ``root``.

    ``replace_other_set=False`` (eval.py) refuses, naming the settings, to replace a set generated
    with other settings: a model would otherwise be scored on other images than it was trained
    on, and the set it was trained on would be gone.

    Reuse is decided by ``root/.darkraw_synthetic.json``, written last: same parameters and all
    files present means nothing is written; otherwise the old files are removed and the set is
    regenerated. Scene ids follow SID (``0xxxx`` train, ``2xxxx`` val, ``1xxxx`` test); shot
    ``00`` of each scene uses ``ratios[0]`` (0.1 s with the default 10 s ground truth, the
    authors' subset).
    """
    root = Path(root)
    counts = {"train": num_train_scenes, "val": num_val_scenes, "test": num_test_scenes}
    ratios = [int(r) if float(r).is_integer() else float(r) for r in ratios]
    noise = {"gain": gain, "read_noise": read_noise, "row_noise": row_noise}
    _validate(counts, height, width, ratios, shots_per_scene, long_exposure, noise)
    params = _parameters(
        **{f"num_{k}_scenes": v for k, v in counts.items()}, height=height, width=width,
        ratios=ratios, shots_per_scene=shots_per_scene, seed=seed, long_exposure=long_exposure,
        **noise,
    )
    if _is_complete(root, params):
        return root
    if not replace_other_set:
        _refuse_other_set(root, params)
    _check_ours(root)
    _say_replacing_other_set(root, params)
    num_scenes = sum(counts.values())
    ensure_free_space(root, _bytes_needed(num_scenes, shots_per_scene, height, width),
                      f"the synthetic SID set ({num_scenes} scenes of {height}x{width})")
    scenes = plan_scenes(counts, ratios, shots_per_scene, long_exposure)
    with _generation_lock(root):
        if not _is_complete(root, params):  # another process may have finished it meanwhile
            _generate(root, scenes, params, seed=seed, height=height, width=width,
                      long_exposure=long_exposure, noise=noise, progress=progress)
    return root


def _generate(
    root: Path, scenes: Sequence[Scene], params: dict[str, Any], *, seed: int, height: int,
    width: int, long_exposure: float, noise: dict[str, float], progress: bool,
) -> None:
    """Remove, write, then mark: the marker comes last, so only a finished set ever counts.

    The caller has checked that ``root`` holds nothing the generator did not write.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / OWNER_NAME).write_text("written by darkraw's synthetic SID generator\n")
    _remove_stale(root)
    with _progress(len(scenes), progress) as bar:
        for scene in scenes:
            _write_scene(root, scene, seed=seed, height=height, width=width,
                         long_exposure=long_exposure, noise=noise)
            bar.update(1)
    files = _write_lists(root, scenes)
    for scene in scenes:
        files.append(f"Sony/long/{scene.long_name}")
        files.extend(f"Sony/short/{shot.name}" for shot in scene.shots)
    marker = {"generator": "darkraw.datamodules.synthetic", "parameters": params, "files": files}
    atomic_write_bytes(root / MARKER_NAME, json.dumps(marker, indent=1).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.synthetic",
        description="Generate darkraw's synthetic SID-style dataset (Bayer DNGs, SID layout).",
    )
    parser.add_argument("--root", default="data/synthetic_sid", help="output folder")
    parser.add_argument("--num-train-scenes", type=int, default=8)
    parser.add_argument("--num-val-scenes", type=int, default=2)
    parser.add_argument("--num-test-scenes", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--ratios", type=int, nargs="+", default=[100, 250, 300])
    parser.add_argument("--shots-per-scene", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-exposure", type=float, default=LONG_EXPOSURE_S)
    parser.add_argument("--gain", type=float, default=GAIN_DN_PER_ELECTRON,
                        help="DN per photo-electron of the simulated short exposures")
    parser.add_argument("--read-noise", type=float, default=READ_NOISE_DN, help="DN (std)")
    parser.add_argument("--row-noise", type=float, default=ROW_NOISE_DN, help="DN (std)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        root = generate_synthetic_sid(
            args.root, num_train_scenes=args.num_train_scenes, num_val_scenes=args.num_val_scenes,
            num_test_scenes=args.num_test_scenes, height=args.height, width=args.width,
            ratios=args.ratios, shots_per_scene=args.shots_per_scene, seed=args.seed,
            progress=not args.no_progress, long_exposure=args.long_exposure, gain=args.gain,
            read_noise=args.read_noise, row_noise=args.row_noise,
        )
    except DarkrawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pairs = sum(len((root / name).read_text().split("\n")) - 1 for name in LIST_FILES.values())
    print(f"synthetic SID set ({pairs} pairs) in {root.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

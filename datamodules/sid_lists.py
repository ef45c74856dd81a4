"""Which short/long files form a training pair, for each split of SID Sony.

Pairs are always matched by scene id: the authors' code paired two directory listings by position,
and its test loader ended up with training ground truths.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from darkraw.errors import DataError
from darkraw.log_once import log_once

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
PairSource = Literal["lists", "authors"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
PAIR_SOURCES: tuple[PairSource, ...] = ("lists", "authors")

#: SID's list files, relative to the dataset root.
LIST_FILES: dict[Split, str] = {
    "train": "Sony_train_list.txt",
    "val": "Sony_val_list.txt",
    "test": "Sony_test_list.txt",
}

#: The authors' subset: this shot index at this exposure, one per scene.
AUTHORS_SHOT = 0
AUTHORS_EXPOSURE = 0.1

SID_DOWNLOAD = "https://github.com/cchen156/Learning-to-See-in-the-Dark (Sony.zip)"
EXPECTED_LAYOUT = (
    "expected <root>/Sony/short/*.ARW (dark inputs), <root>/Sony/long/*.ARW (ground truth) and "
    "<root>/Sony_{train,val,test}_list.txt, as unpacked from SID's Sony set: "
    f"{SID_DOWNLOAD}"
)

_NAME_RE = re.compile(
    r"^(?P<scene>\d{5})_(?P<shot>\d+)_(?P<exposure>\d+(?:\.\d+)?)s\.[A-Za-z0-9]+$"
)


class SIDLayoutError(DataError, ValueError):
    """The dataset folder, a list file or a file name does not follow SID's conventions."""


@dataclass(frozen=True)
class SIDName:
    """What a SID file name says: ``SSSSS_II_Ts.<ext>``."""

    scene: str
    shot: int
    exposure: float

    @property
    def split(self) -> Split:
        return split_of_scene(self.scene)


@dataclass(frozen=True)
class SIDPair:
    """A dark input and its ground truth; paths are absolute, ``relpath``s key the cache."""

    short: Path
    long: Path
    short_relpath: str
    long_relpath: str
    scene: str
    shot: int
    short_exposure: float
    long_exposure: float

    @property
    def name(self) -> str:
        return Path(self.short_relpath).stem


def parse_sid_name(path: str | Path) -> SIDName:
    """Scene id, shot index and exposure time (seconds) from a SID file name."""
    name = Path(path).name
    match = _NAME_RE.match(name)
    if match is None:
        raise SIDLayoutError(
            f"{path}: file name {name!r} does not follow SID's SSSSS_II_Ts.<ext> pattern "
            "(5-digit scene id, shot index, exposure in seconds, e.g. 00001_00_0.1s.ARW)"
        )
    exposure = float(match["exposure"])
    if exposure <= 0:
        raise SIDLayoutError(f"{path}: exposure time {match['exposure']} s must be positive")
    return SIDName(scene=match["scene"], shot=int(match["shot"]), exposure=exposure)


def split_of_scene(scene: str) -> Split:
    """SID's split by the first digit of the scene id: 0 train, 2 validation, 1 test."""
    first = scene[:1]
    if first == "0":
        return "train"
    if first == "2":
        return "val"
    if first == "1":
        return "test"
    raise SIDLayoutError(
        f"scene id {scene!r} starts with {first!r}: SID scene ids start with 0 (train), "
        "2 (validation) or 1 (test)"
    )


def check_layout(root: str | Path) -> Path:
    """The root, after checking that SID's two image folders are where they should be."""
    root = Path(root)
    if not root.is_dir():
        raise SIDLayoutError(f"SID dataset root {root} does not exist or is not a folder: set "
                             "data.root=<SID folder> (or paths.sid_root in "
                             "conf/local/default.yaml; --root for python -m datamodules.cache); "
                             f"{EXPECTED_LAYOUT}")
    for sub in ("short", "long"):
        folder = root / "Sony" / sub
        if not folder.is_dir():
            raise SIDLayoutError(f"missing folder {folder}; {EXPECTED_LAYOUT}")
    return root


def _join(root: Path, relative: str) -> Path:
    """Absolute, ``..``-free path without following symlinks (the Sony folder may be a link)."""
    return Path(os.path.normpath(root.absolute() / relative))


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _make_pair(short: Path, long: Path, root: Path) -> SIDPair:
    """The pair, or an error that says what is wrong without saying where: each caller knows
    where it read the pair (a list file's line, a scanned file) and names it once."""
    short_name, long_name = parse_sid_name(short), parse_sid_name(long)
    if short_name.scene != long_name.scene:
        raise SIDLayoutError(
            f"short file {short.name} (scene {short_name.scene}) is paired with "
            f"{long.name} (scene {long_name.scene}); a pair must share its scene id"
        )
    return SIDPair(
        short=short,
        long=long,
        short_relpath=_relpath(short, root),
        long_relpath=_relpath(long, root),
        scene=short_name.scene,
        shot=short_name.shot,
        short_exposure=short_name.exposure,
        long_exposure=long_name.exposure,
    )


def parse_list_file(path: str | Path, root: str | Path) -> list[SIDPair]:
    """Pairs of one SID list file (``./Sony/short/X ./Sony/long/Y ISO200 F8`` per line)."""
    path, root = Path(path), _join(Path(root), ".")
    if not path.is_file():
        raise SIDLayoutError(f"missing list file {path}; {EXPECTED_LAYOUT}")
    pairs: list[SIDPair] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        fields = stripped.split()
        if len(fields) < 2:
            raise SIDLayoutError(
                f"{where}: malformed line {stripped!r}; expected '<short path> <long path> "
                "[ISO..] [F..]', e.g. './Sony/short/00001_00_0.04s.ARW "
                "./Sony/long/00001_00_10s.ARW ISO200 F8'"
            )
        short, long = (_join(root, field) for field in fields[:2])
        for kind, field, file in (("short", fields[0], short), ("long", fields[1], long)):
            if file.parent.name != kind:
                raise SIDLayoutError(
                    f"{where}: malformed line {stripped!r}: the {kind} file {field!r} is not in a "
                    f"'{kind}' folder (are the two columns swapped?)"
                )
        try:
            pair = _make_pair(short, long, _join(root, "."))
        except SIDLayoutError as exc:
            raise SIDLayoutError(f"{where}: malformed line {stripped!r}: {exc}") from exc
        except ValueError as exc:  # relative_to: path escapes the root
            raise SIDLayoutError(
                f"{where}: malformed line {stripped!r}: path outside the dataset root {root}"
            ) from exc
        for file in (short, long):
            if not file.is_file():
                raise SIDLayoutError(
                    f"{where}: listed file {file} does not exist; the download may be incomplete "
                    f"(re-download SID Sony: {SID_DOWNLOAD}) or the root {root} is wrong"
                )
        pairs.append(pair)
    if not pairs:
        raise SIDLayoutError(
            f"list file {path} is empty: it lists no pairs. Restore it from SID's download "
            f"({SID_DOWNLOAD})"
        )
    return pairs


def pairs_from_lists(root: str | Path) -> dict[Split, list[SIDPair]]:
    """SID's own train/val/test lists (every short exposure of every scene)."""
    root = check_layout(root)
    return {split: parse_list_file(root / name, root) for split, name in LIST_FILES.items()}


def _scan(folder: Path) -> Iterable[tuple[Path, SIDName]]:
    """SID-named files of a folder, sorted; other files (e.g. ``.DS_Store``) are ignored."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and _NAME_RE.match(path.name):
            yield path, parse_sid_name(path)


def pairs_from_authors(root: str | Path) -> dict[Split, list[SIDPair]]:
    """The authors' subset: shot 00 at 0.1 s of each scene; train covers train + val scenes."""
    root = _join(check_layout(root), ".")
    longs: dict[str, list[tuple[Path, SIDName]]] = {}
    for path, name in _scan(root / "Sony" / "long"):
        longs.setdefault(name.scene, []).append((path, name))
    by_split: dict[Split, list[SIDPair]] = {split: [] for split in SPLITS}
    for path, name in _scan(root / "Sony" / "short"):
        if name.shot != AUTHORS_SHOT or not math.isclose(name.exposure, AUTHORS_EXPOSURE):
            continue
        candidates = longs.get(name.scene, [])
        if not candidates:
            raise SIDLayoutError(
                f"{path}: no ground truth for scene {name.scene} in {root / 'Sony' / 'long'}; "
                f"the download may be incomplete ({SID_DOWNLOAD})"
            )
        if len(candidates) > 1:
            first = [c for c in candidates if c[1].shot == AUTHORS_SHOT]
            if len(first) != 1:
                found = ", ".join(c[0].name for c in candidates)
                raise SIDLayoutError(
                    f"{path}: scene {name.scene} has several ground truths ({found}) in "
                    f"{root / 'Sony' / 'long'} and none is unambiguously shot "
                    f"{AUTHORS_SHOT:02d}; remove the extra files"
                )
            candidates = first
        try:
            pair = _make_pair(path, candidates[0][0], root)
        except SIDLayoutError as exc:
            raise SIDLayoutError(f"{path}: {exc}") from exc
        by_split[name.split].append(pair)
    paired = {pair.scene for pairs in by_split.values() for pair in pairs}
    left_out = sorted(set(longs) - paired)
    if left_out:
        # A normal SID download has this shot for every scene: an incomplete one may not.
        log_once(
            log, logging.WARNING,
            "%d scene(s) with a ground truth have no first shot at %gs (e.g. %s in %s): they are "
            "not in the 'authors' subset; check the download if that is unexpected",
            len(left_out), AUTHORS_EXPOSURE, left_out[0], root / "Sony" / "short",
        )
    by_split["train"] = sorted(by_split["train"] + by_split["val"], key=lambda p: p.short_relpath)
    for split in SPLITS:
        if not by_split[split]:
            raise SIDLayoutError(
                f"no {split} pairs for the 'authors' subset in {root}: it needs short files "
                f"named SSSSS_{AUTHORS_SHOT:02d}_{AUTHORS_EXPOSURE}s.<ext> in "
                f"{root / 'Sony' / 'short'} (scene ids 0xxxx/2xxxx train, 2xxxx val, "
                "1xxxx test)"
            )
    return by_split


def load_pairs(root: str | Path, source: str) -> dict[Split, list[SIDPair]]:
    """Pairs of every split from ``source`` (``"lists"`` or ``"authors"``)."""
    if source == "lists":
        return pairs_from_lists(root)
    if source == "authors":
        return pairs_from_authors(root)
    raise SIDLayoutError(f"pairs={source!r} is not a pair source; choose one of {PAIR_SOURCES}")

"""Fail before writing, not half-way: a 25 GB unzip that filled a disk cost a reproduction a day."""

from __future__ import annotations

import shutil
from pathlib import Path

from darkraw.errors import DiskSpaceError

GB = 1024**3


def existing_parent(path: Path) -> Path:
    """The nearest folder of ``path`` that exists (the one whose file system will be written)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_free_space(path: str | Path, needed_bytes: float, what: str) -> None:
    """Raise :class:`DiskSpaceError` naming the folder and the size needed, if it does not fit."""
    folder = existing_parent(Path(path))
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"not enough free disk space for {what} in {Path(path)}: need "
            f"{needed_bytes / GB:.2f} GB, {free / GB:.2f} GB free on the disk of {folder}. "
            "Free some space or point the path to a larger disk."
        )

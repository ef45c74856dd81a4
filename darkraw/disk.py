"""Fail before writing, not half-way: a 25 GB unzip that filled a disk cost a reproduction a day."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from darkraw.errors import DiskSpaceError

GB = 1024**3


def existing_parent(path: Path) -> Path:
    """The nearest folder of ``path`` that exists (the one whose file system will be written)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_free_space(path: str | Path, needed_bytes: float, what: str,
                      margin_setting: str | None = None) -> None:
    """Raise :class:`DiskSpaceError` naming the folder and the size needed, if it does not fit.

    ``margin_setting`` (``"min_free_disk_gb=1.0"``) is the config value the size needed comes
    from, if one does: the error names it, or a user short of a few MB has to search for it.
    """
    folder = existing_parent(Path(path))
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        margin = (f" ({margin_setting} asks for that much: lower it if the run needs less)"
                  if margin_setting else "")
        raise DiskSpaceError(
            f"not enough free disk space for {what} in {Path(path)}: need "
            f"{size_text(needed_bytes)}{margin}, {size_text(free)} free on the disk of "
            f"{folder}. Free some space or point the path to a larger disk."
        )


def size_text(n_bytes: float) -> str:
    """GB to two decimals, or MB below 1 GB: "need 0.01 GB, 0.00 GB free" said nothing."""
    if n_bytes >= GB:
        return f"{n_bytes / GB:.2f} GB"
    return f"{n_bytes / 1024**2:.1f} MB"


def is_disk_full(error: BaseException) -> bool:
    """A write that failed because the disk (or the user's quota) is full: worth its own message,
    since the file being written is not at fault and retrying elsewhere is the cure."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def free_gb(path: str | Path) -> float:
    return shutil.disk_usage(existing_parent(Path(path))).free / GB


@contextlib.contextmanager
def replaced_when_complete(path: str | Path, suffix: str = ".partial",
                           partial_name: Callable[[Path], Path] | None = None) -> Iterator[Path]:
    """A hidden sibling of ``path`` to write instead; renamed over ``path`` when the block ends
    without an exception, deleted otherwise.

    A crash, a full disk or a Ctrl-C mid-write then leaves neither a truncated file under the
    real name (that a later look would take as finished) nor the previous file deleted; and no
    temporary file piles up beside it either (only a SIGKILL can leave one, ending in
    ``suffix``, for a clean-up to recognise). Its name is unique per process and call;
    ``partial_name(path)`` names it instead where a clean-up needs more in the name (the data
    cache's: the host, on a file system that several machines share).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = (partial_name(path) if partial_name is not None else
               path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}"))
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)

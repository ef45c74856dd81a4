"""LibRaw's own complaints, moved from the terminal into darkraw's error about the file.

LibRaw's C code writes some messages straight to file descriptor 2 (``x.dng: Unexpected end of
file`` for a truncated file), where Python cannot catch them: a user saw that line and, apart from
it, darkraw's error naming the same file, and could not tell whether they were one problem or
two. While a raw file is read, file descriptor 2 goes to a temporary file; LibRaw's lines about
that file become part of the error when the read fails, and everything else captured (another
thread's output, LibRaw's notes on a file that did decode) is written to the real stderr
afterwards, so nothing is lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rawpy

#: One capture at a time: two threads swapping file descriptor 2 would restore each other's.
_SWAP = threading.Lock()


def _c_stdio() -> ctypes.CDLL | None:
    """The C library whose ``stderr`` LibRaw writes through, to flush it before the swap back."""
    try:
        name = ctypes.util.find_library("c")
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _c_stdio()


def _flush_c_stderr() -> None:
    if _LIBC is not None:
        _LIBC.fflush(None)  # glibc's stderr is unbuffered; another C library's may not be


@contextmanager
def libraw_output(path: Path) -> Iterator[list[str]]:
    """Yield a list that, once the block has ended with a ``rawpy.LibRawError``, holds the lines
    LibRaw wrote about ``path`` (without the ``path:`` prefix). Any other end of the block, and
    every other captured line, sends the captured text on to stderr unchanged.

    Where file descriptor 2 cannot be swapped (no such descriptor, another thread capturing),
    the block runs as it is, and LibRaw writes to the terminal as before.
    """
    said: list[str] = []
    if not _SWAP.acquire(blocking=False):
        yield said
        return
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield said
            return
        failed_in_libraw = False
        with tempfile.TemporaryFile() as sink:
            try:
                os.dup2(sink.fileno(), 2)
                yield said
            except BaseException as exc:
                failed_in_libraw = isinstance(exc, rawpy.LibRawError)
                raise
            finally:
                _flush_c_stderr()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", errors="replace")
                _sort_out(text, path, said if failed_in_libraw else None)
    finally:
        _SWAP.release()


def _sort_out(text: str, path: Path, said: list[str] | None) -> None:
    """Put LibRaw's lines about ``path`` in ``said`` (when given) and send the rest on."""
    prefix = f"{path}: "
    passed_on: list[str] = []
    for line in text.splitlines(keepends=True):
        if said is not None and line.startswith(prefix) and line.strip() != prefix.strip():
            said.append(line[len(prefix):].strip())
        else:
            passed_on.append(line)
    if passed_on:
        sys.stderr.write("".join(passed_on))
        sys.stderr.flush()

"""Errors a user can act on: they carry a message naming the file, key or value and the fix.

train.py prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from collections.abc import Sequence


class DarkrawError(Exception):
    """Base of every user-facing error."""


class ConfigError(DarkrawError, ValueError):
    """A config value that is not allowed; the message lists what is."""


class DataError(DarkrawError):
    """Missing, malformed or corrupt data on disk."""


class DiskSpaceError(DarkrawError, OSError):
    """Not enough free disk space for what is about to be written."""


class TrainingHealthError(DarkrawError, RuntimeError):
    """Training that runs without errors but does not learn."""


def first_few(names: Sequence[str], limit: int, more: str = ", ... ({} more)") -> str:
    """The first ``limit`` names, comma-separated, and how many more: a message about a long
    list (a folder of thousands of files, a state dict of hundreds of keys) stays one line."""
    shown = ", ".join(names[:limit])
    return shown + (more.format(len(names) - limit) if len(names) > limit else "")

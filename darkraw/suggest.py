"""The closest valid name for a misspelt one: the "did you mean" of every darkraw error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[object], prefix: str = "") -> str | None:
    """``did you mean <prefix><closest>?``, or None when no choice is close to ``name``."""
    close = difflib.get_close_matches(str(name), sorted(str(c) for c in choices), n=1)
    return f"did you mean {prefix}{close[0]}?" if close else None

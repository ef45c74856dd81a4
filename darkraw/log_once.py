"""Say a data set's facts once per process.

Lightning and the pre-flight check set the data module up several times per run (the check,
fit, test), and each setup would otherwise repeat the same lines about the same pairs.
"""

from __future__ import annotations

import logging

_said: set[tuple[str, int, str]] = set()


def log_once(logger: logging.Logger, level: int, message: str, *args: object) -> None:
    """``logger.log(level, message, *args)`` unless this exact line was logged before."""
    line = message % args if args else message
    key = (logger.name, level, line)
    if key in _said:
        return
    _said.add(key)
    logger.log(level, "%s", line)

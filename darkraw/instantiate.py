"""Hydra's ``instantiate`` with darkraw's user-facing errors passed through unwrapped.

Hydra wraps any exception raised by a ``_target_`` in an InstantiationException whose message
starts with a stack of internals; a DataModule's "data.root=... does not exist" must reach the
user as itself, with its message and no traceback.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from darkraw.errors import DarkrawError


def instantiate_checked(config: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(config, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DarkrawError):
            raise cause from None
        raise

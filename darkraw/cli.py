"""How every entry point ends on a user error: one line naming what to fix, exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from darkraw.errors import DarkrawError

T = TypeVar("T")


def exit_with_user_error(error: DarkrawError) -> NoReturn:
    """No traceback: the message already names the file, key or value and what to do."""
    print(f"darkraw: error: {error}", file=sys.stderr)
    sys.exit(1)


def run_reporting_user_errors(run: Callable[..., T], *args: object) -> T:
    try:
        return run(*args)
    except DarkrawError as error:
        exit_with_user_error(error)

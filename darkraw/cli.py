"""How every entry point ends on a user error: one line naming what to fix, exit status 1.

Also what eval.py and restore.py do to their command line before Hydra reads it: paths of real
runs hold ``=`` and ``,`` (run folders are named by their overrides), which Hydra's override
grammar would otherwise reject unless the user quotes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf

from darkraw.errors import ConfigError, DarkrawError

T = TypeVar("T")

QUOTES = ("'", '"')
MULTIRUN_FLAGS = ("-m", "--multirun")


def exit_with_user_error(error: DarkrawError) -> NoReturn:
    """No traceback: the message already names the file, key or value and what to do."""
    print(f"darkraw: error: {error}", file=sys.stderr)
    sys.exit(1)


def run_reporting_user_errors(run: Callable[..., T], *args: object) -> T:
    try:
        return run(*args)
    except DarkrawError as error:
        exit_with_user_error(error)


def quote_value(value: str) -> str:
    """``value`` as a single-quoted Hydra string that parses back to exactly ``value``.

    Hydra's own escaper: inside quotes only a quote and the backslashes right before a quote (or
    before the closing quote) are escaped; every other character, ``=``, ``,`` and spaces
    included, is literal. ``${...}`` interpolations keep working inside quotes.
    """
    from hydra.core.override_parser.types import Quote, QuotedString

    return QuotedString(text=value, quote=Quote.single).with_quotes()


def quote_path_arguments(argv: Sequence[str], keys: Iterable[str]) -> list[str]:
    """Quote the values of ``key=value`` arguments for path-valued ``keys``.

    Left as written: values already in quotes, ``null`` (which means "not set", not a file
    called null), empty values, other keys, and the whole command line under ``-m/--multirun``,
    where ``,`` separates sweep values (quote paths by hand there).
    """
    if any(arg in MULTIRUN_FLAGS for arg in argv):
        return list(argv)
    keys = set(keys)
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (sep and key.lstrip("+") in keys and value and value.lower() != "null"
                and not (len(value) >= 2 and value[0] in QUOTES and value[-1] == value[0])):
            arg = f"{key}={quote_value(value)}"
        quoted.append(arg)
    return quoted


def quote_path_arguments_in_sys_argv(keys: Iterable[str]) -> None:
    """Apply :func:`quote_path_arguments` to this process's command line, before ``@hydra.main``."""
    sys.argv[1:] = quote_path_arguments(sys.argv[1:], keys)


def require_set(cfg: DictConfig, examples: Mapping[str, str]) -> None:
    """Fail with how to pass it when a mandatory key (``???``) was not given.

    Without this check OmegaConf raises MissingMandatoryValue, with a traceback, at first use.
    """
    for key, example in examples.items():
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is not set: pass it on the command line, e.g. {example}")

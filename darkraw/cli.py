"""How every entry point ends on a user error: one line naming what to fix, exit status 1.

Also what eval.py and restore.py do to their command line before Hydra reads it: paths of real
runs hold ``=`` and ``,`` (run folders are named by their overrides), which Hydra's override
grammar would otherwise reject unless the user quotes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf

from darkraw.errors import ConfigError, DarkrawError, DiskSpaceError
from darkraw.suggest import did_you_mean

T = TypeVar("T")

QUOTES = ("'", '"')
MULTIRUN_FLAGS = ("-m", "--multirun")


def at_least_one(what: str) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number >= 1, refused with ``give at least 1 <what>``
    when the arguments are parsed (not only once it is used, or never)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            import argparse

            raise argparse.ArgumentTypeError(f"{text!r}: give at least 1 {what}".rstrip())
        return value

    return parse


def user_message(error: BaseException) -> str:
    """The error's own message, also when a DataLoader worker raised it: torch re-raises it in
    the main process as the same type around "Caught X in DataLoader worker process 0" and the
    worker's whole traceback, whose last line is the message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def exit_with_user_error(error: DarkrawError) -> NoReturn:
    """No traceback: the message already names the file, key or value and what to do."""
    print(f"darkraw: error: {user_message(error)}", file=sys.stderr)
    sys.exit(1)


def run_reporting_user_errors(run: Callable[..., T], *args: object) -> T:
    """``run(*args)``, with user errors, a full disk and Ctrl-C each ending in one line."""
    try:
        return run(*args)
    except KeyboardInterrupt:
        print("\ndarkraw: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except DarkrawError as error:
        exit_with_user_error(error)
    except OSError as error:
        disk_full = disk_full_error(error)
        if disk_full is None:
            raise
        exit_with_user_error(disk_full)


def disk_full_error(error: BaseException,
                    folders: Iterable[str | Path] = ()) -> DiskSpaceError | None:
    """A write that hit a full disk anywhere (images, metrics, W&B, generated data), as a user
    error: the file is not at fault, and a traceback would hide the cure. A failed write does not
    say which file it was, so the free space of the run's own ``folders`` is shown instead."""
    from darkraw.disk import free_gb, is_disk_full

    if not is_disk_full(error):
        return None
    assert isinstance(error, OSError)
    what = error.filename or "a file"
    free = "; ".join(f"{folder}: {free_gb(folder):.2f} GB free" for folder in folders)
    return DiskSpaceError(
        f"the disk filled up while writing {what} ({free or 'no space left on the device'}): "
        "free some space or point the output (paths.root_dir, output=..., data.cache_dir) to a "
        "larger disk, then run the same command; a training run resumes from its last "
        "checkpoint"
    )


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


#: The configs the entry points' ``@hydra.main(config_path="conf")`` read.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(config_name: str, overrides: Sequence[str],
                   with_hydra: bool = False) -> DictConfig:
    """``conf/<config_name>`` with ``overrides``, composed outside ``@hydra.main`` (Hydra's own
    settings under ``hydra.`` with ``with_hydra``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=with_hydra)


def composition_error(config_name: str, overrides: Sequence[str]) -> str | None:
    """What is wrong with ``overrides``, in one line, or None when they compose (or cannot be
    judged here: command-line flags and sweeps are left to Hydra).

    Hydra reports a misspelt key, group option or value in a block of lines (the config search
    path included) and suggests ``+key=`` for a typo; this names the override, the closest
    existing key or option, and what to do, as darkraw's own checks do.
    """
    if any(arg.startswith("-") for arg in overrides):
        return None  # --help, --cfg, -m, --config-dir ...: Hydra's own business
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    def compose_all(args: Sequence[str], with_hydra: bool = False) -> DictConfig:
        return compose_config(config_name, args, with_hydra)

    try:
        compose_all(overrides)
    except MissingConfigException as error:
        missing = str(getattr(error, "missing_cfg_file", "") or "")
        options = list(getattr(error, "options", None) or [])
        if "/" not in missing or not options:
            return None
        group, option = missing.rsplit("/", 1)
        typed = next((a.split("=", 1)[0] for a in overrides
                      if override_key(a) == group), group)
        hint = did_you_mean(option, options, f"{typed}=")
        return (f"{typed}={option} is not an option of the {group} group: choose one of "
                f"{options}" + (f" ({hint})" if hint else ""))
    except OverrideParseException as error:
        culprit, reason = unreadable_override(overrides) or (" ".join(overrides), str(error))
        return (f"cannot read the override {culprit!r}: {reason.splitlines()[0]} (overrides "
                "are key=value; quote a value with special characters, e.g. key='a value')")
    except ConfigCompositionException as error:
        if str(error).startswith("Ambiguous value for argument"):
            sweeps = sweep_overrides(overrides)
            rest = [arg for arg in overrides if arg not in sweeps]
            # Another mistake among the rest is said first: it would fail under -m as well.
            return (composition_error(config_name, rest) if sweeps else None) or (
                sweep_without_multirun(sweeps, compose_all(rest, True)))
        # Only a key that does not exist; a value of the wrong type for a typed key (Hydra's
        # own settings) also names its key, and is Hydra's to explain.
        cause = error.__cause__
        key = getattr(cause, "full_key", None)
        if not key or not isinstance(cause, ConfigAttributeError | ConfigKeyError):
            return None
        parent, _, leaf = str(key).rpartition(".")
        others = [a for a in overrides if not a.lstrip("+~").startswith(str(key))]
        try:
            node = compose_all(others)
            siblings = [str(k) for k in (OmegaConf.select(node, parent) if parent else node)]
        except Exception:  # the other overrides fail too: no suggestion, Hydra's words stand
            siblings = []
        hint = (did_you_mean(leaf, siblings, f"{parent}." if parent else "")
                or "check its spelling (`--cfg job` prints every key)")
        return f"{key} is not a setting: {hint}"
    except ValueError as error:
        if "Config group override must be a string" in str(error):
            return null_group_override(overrides, compose_all)
        return None
    except Exception:  # anything else (an interpolation, a plugin): Hydra reports it as ever
        return None
    return None


def null_group_override(overrides: Sequence[str],
                        compose_all: Callable[[Sequence[str]], DictConfig]) -> str | None:
    """The line for ``callbacks=null`` (a group set to null), which Hydra answers with a
    ValueError traceback: one entry is dropped with ``callbacks.<name>=null``."""
    for arg in overrides:
        key, _, value = arg.partition("=")
        group = key.lstrip("+~")
        folder = CONF_DIR / group
        if value.strip().lower() not in ("null", "none", "~") or not folder.is_dir():
            continue
        options = sorted(path.stem for path in folder.glob("*.yaml"))
        message = (f"{arg}: {group} is a config group, set to one of its options {options}, "
                   "not to null")
        if "none" in options:
            message += f" (use {group}=none to turn it off)"
        try:
            node = compose_all([a for a in overrides if a != arg]).get(group)
        except Exception:
            node = None
        named = [str(name) for name, entry in (node.items() if isinstance(node, DictConfig)
                                               else ()) if isinstance(entry, DictConfig)
                 and "_target_" in entry]
        if named:
            # A group of named objects (callbacks, loggers): each entry can be left out.
            message += f"; to leave out one of its entries use {group}.<name>=null, one of {named}"
        return message
    return None


def sweep_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are sweeps (``m=1,5``, ``seed=range(3)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return [arg for arg in overrides if parser.parse_override(arg).is_sweep_override()]


def sweep_without_multirun(sweeps: Sequence[str], composed: DictConfig) -> str | None:
    """The line for a comma list (``m=1,5``) given without ``-m``, or None where the config
    itself asks for a multirun (``+sweep=rdb`` sets ``hydra.mode: MULTIRUN``) and Hydra runs it.

    ``composed``: the config of the other overrides, with Hydra's own settings. Hydra's answer
    is five lines ending in ``HYDRA_FULL_ERROR``, naming neither fix for the key at hand.
    """
    from hydra.types import RunMode

    if not sweeps or composed.hydra.mode == RunMode.MULTIRUN:
        return None
    key, _, values = sweeps[0].partition("=")
    return (f"{sweeps[0]} is a comma list, which Hydra takes for a sweep over its values: write "
            f"{key}=[{values}] for a list value, or add -m to run once per value")


def unreadable_override(overrides: Sequence[str]) -> tuple[str, str] | None:
    """The first override Hydra's grammar rejects, and why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in overrides:
        try:
            parser.parse_override(arg)
        except HydraException as error:  # parse_override words it as a plain HydraException
            return arg, str(error)
    return None


def override_key(override: object) -> str:
    """The key an override names, without Hydra's ``+``, ``++`` or ``~``: ``+a.b=1`` is ``a.b``."""
    return str(override).partition("=")[0].lstrip("+~")


def repeated_overrides(argv: Sequence[str]) -> list[str]:
    """One warning per key given more than once: Hydra keeps the last value without a word, so
    ``data.batch_size=16 ... data.batch_size=8`` (a command built up by hand or by a script)
    trained with 8 while the command line also read 16."""
    given: dict[str, list[str]] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # flags (-m, --cfg job) and their values
        given.setdefault(override_key(arg), []).append(arg)
    return [f"{key} is given {len(args)} times ({', then '.join(args)}): only the last counts"
            for key, args in given.items() if len(args) > 1]


def exit_on_composition_error(config_name: str, argv: Sequence[str]) -> None:
    """Before ``@hydra.main``: a wrong override ends in one line, as every other user error."""
    for warning in repeated_overrides(argv):
        print(f"darkraw: warning: {warning}", file=sys.stderr)
    message = composition_error(config_name, argv)
    if not message:
        from darkraw.sweep_check import check_sweep

        checked = check_sweep(config_name, argv)
        for warning in checked.warnings:
            print(f"darkraw: warning: {warning}", file=sys.stderr)
        message = checked.error
    if message:
        exit_with_user_error(ConfigError(message))

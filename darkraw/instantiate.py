"""Hydra's ``instantiate`` with darkraw's user-facing errors passed through unwrapped.

Hydra wraps any exception raised by a ``_target_`` in an InstantiationException whose message
starts with a stack of internals; a DataModule's "data.root=... does not exist" must reach the
user as itself, with its message and no traceback.

Hydra also hands values to the target as parsed, so ``data.batch_size=abc`` arrives as the
string ``'abc'`` and fails deep inside the target (``'<' not supported between instances of 'str'
and 'int'``). :func:`check_argument_types` checks the numeric and true/false settings against the
target's own ``__init__`` annotations first: the signature stays the one place that says what
type each setting has. A key the target does not take at all (``+data.batchsize=2``, a typo that
Hydra's struct check lets through once the user follows its advice to add ``+``) is refused the
same way, with the closest name, instead of Hydra's multi-line "got an unexpected keyword
argument".
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from darkraw.errors import ConfigError, DarkrawError
from darkraw.suggest import did_you_mean

#: The value types checked; a parameter whose annotation mentions anything else is left alone.
SCALAR_KINDS: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false",
                                 type(None): "null"}


def instantiate_checked(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``instantiate(config, ...)``, after :func:`check_argument_types`, with darkraw's own errors
    raised as themselves (eval.py and train.py both build their data module through it)."""
    check_argument_types(config, given=kwargs)
    try:
        return instantiate(config, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DarkrawError):
            raise cause from None
        raise


def check_argument_types(config: Any, given: Iterable[str] = ()) -> None:
    """Refuse a config's numeric or true/false setting of the wrong type, naming its full key.

    ``config`` is a node with a ``_target_`` (``cfg.data``, ``cfg.trainer``); keys in ``given``
    (keyword arguments passed besides the config) are not the config's to check. A target that
    cannot be imported is left for ``instantiate`` to report.
    """
    if not isinstance(config, Mapping) or "_target_" not in config:
        return
    try:
        target = get_object(str(config["_target_"]))
    except Exception:  # instantiate reports a bad _target_ in its own words
        return
    check_known_keys(target, config, skip=given)
    check_values(target, config, skip=given)


def check_known_keys(target: Callable[..., Any], values: Mapping[str, Any],
                     skip: Iterable[str] = (), prefix: str | None = None) -> None:
    """Refuse a key that ``target`` does not take, naming it and the closest one it does take.

    Targets that take ``**kwargs`` all the way up (they pass unknown keys on) accept anything.
    ``prefix`` names the values' place in the config when they are no longer a config node.
    """
    parameters = parameter_types(target)
    if accepts_any_keyword(target):
        return
    if prefix is None and isinstance(values, DictConfig):
        prefix = values._get_full_key(None)
    skipped = set(skip)
    allowed = sorted(name for name in parameters if name != "self")
    for key in values:
        if (not isinstance(key, str) or key.startswith("_") or key in skipped
                or key in parameters):
            continue
        name = f"{prefix}.{key}" if prefix else key
        hint = did_you_mean(key, allowed, f"{prefix}." if prefix else "") or f"it takes {allowed}"
        target_name = getattr(target, "__qualname__", str(target))
        raise ConfigError(f"{name} is not a setting of {target_name}: {hint} (remove the key, "
                          "or correct its name)")


def accepts_any_keyword(target: Callable[..., Any]) -> bool:
    """Whether calling ``target`` accepts keyword arguments of any name.

    A class whose ``__init__`` passes ``**kwargs`` to a parent with a closed signature
    (``SyntheticSIDDataModule``) does not: the parent's parameters are what it takes.
    """
    functions = _signature_chain(target)
    if not functions:
        return True  # nothing to read a signature from: do not guess
    try:
        last = inspect.signature(functions[-1])
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in last.parameters.values())


def check_values(target: Callable[..., Any], values: Mapping[str, Any],
                 prefix: str | None = None, skip: Iterable[str] = ()) -> None:
    """Check ``values`` against the scalar annotations of ``target``'s parameters.

    ``prefix`` names the config group in messages; by default a DictConfig's own key
    (``data``, ``callbacks.lr_monitor``). Keys that are not parameters of ``target`` are
    skipped: other checks (or the target itself) say what is wrong with them.
    """
    if prefix is None and isinstance(values, DictConfig):
        prefix = values._get_full_key(None)  # OmegaConf has no public spelling of it
    skipped = set(skip)
    parameters = parameter_types(target)
    for key in values:
        if (not isinstance(key, str) or key.startswith("_") or key in skipped
                or key not in parameters):
            continue
        try:
            value = values[key]  # resolves an interpolation
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # a broken interpolation: instantiate reports it
            continue
        kinds, default = parameters[key]
        if kinds is None or fits(value, kinds):
            continue
        name = f"{prefix}.{key}" if prefix else key
        example = default if fits(default, kinds) else None
        raise ConfigError(type_message(name, value, describe(kinds), example))


def fits(value: object, kinds: frozenset[type]) -> bool:
    """Whether ``value`` is one of ``kinds``; an int is a float too, a bool is neither."""
    if value is None or isinstance(value, bool):
        return type(value) in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    return False


def as_override(value: object) -> str:
    """A value as it is written on the command line (``true``, ``null``, ``'abc'``)."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else repr(value)


def type_message(key: str, value: object, wanted: str, default: object = None) -> str:
    """``data.batch_size='abc' must be an integer, not a string (e.g. data.batch_size=8)``."""
    got = {str: "a string", list: "a list", dict: "a mapping", bool: "true or false"}.get(
        type(value))
    message = f"{key}={as_override(value)} must be {wanted}"
    if got is not None and not wanted.startswith(got):
        message += f", not {got}"
    if default is not None and default is not inspect.Parameter.empty:
        message += f" (e.g. {key}={as_override(default)})"
    return message


def describe(kinds: frozenset[type]) -> str:
    return " or ".join(text for kind, text in SCALAR_KINDS.items()
                       if kind in kinds and not (kind is int and float in kinds))


def parameter_types(target: Callable[..., Any]) -> dict[str, tuple[frozenset[type] | None,
                                                                   object]]:
    """``{parameter: (scalar kinds or None, default)}`` of what calling ``target`` accepts.

    A class whose ``__init__`` passes ``**kwargs`` on (``SyntheticSIDDataModule``) also takes
    its parents' parameters; the class's own annotation wins.
    """
    functions = _signature_chain(target)
    found: dict[str, tuple[frozenset[type] | None, object]] = {}
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            continue
        hints = _annotations(function)
        for name, parameter in signature.parameters.items():
            if name in found or parameter.kind in (parameter.VAR_POSITIONAL,
                                                   parameter.VAR_KEYWORD):
                continue
            found[name] = (scalar_kinds(hints.get(name, inspect.Parameter.empty)),
                           parameter.default)
    return found


def _signature_chain(target: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The functions whose parameters calling ``target`` takes: a class's ``__init__`` and, while
    one passes ``**kwargs`` on, its parents' (up to ``object``, which takes none)."""
    if not inspect.isclass(target):
        return [target]
    functions: list[Callable[..., Any]] = []
    for cls in inspect.getmro(target):
        init = cls.__dict__.get("__init__")
        if init is None or cls is object:
            continue
        functions.append(init)
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return functions


def _annotations(function: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations; one that cannot be resolved (a name imported only for type
    checkers) is left out rather than spoiling the others."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # fall back to one annotation at a time
        pass
    resolved: dict[str, Any] = {}
    namespace = getattr(function, "__globals__", {})
    for name, annotation in getattr(function, "__annotations__", {}).items():
        try:
            resolved[name] = eval(annotation, namespace) if isinstance(annotation, str) \
                else annotation
        except Exception:  # an annotation of the function's own module
            continue
    return resolved


def scalar_kinds(annotation: Any) -> frozenset[type] | None:
    """The set of int/float/bool/None an annotation allows, or None if it allows anything else."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if annotation is None:
        annotation = type(None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        for member in typing.get_args(annotation):
            member_kinds = scalar_kinds(member)
            if member_kinds is None:
                return None
            kinds |= member_kinds
        return frozenset(kinds)
    if annotation in SCALAR_KINDS:
        return frozenset({annotation})
    return None

"""Typed settings of the model side (network, loss, optimiser, LR schedule).

They are the schema behind the Hydra groups ``model``, ``loss``, ``optimizer`` and ``scheduler``
and the form in which a checkpoint stores them, so a checkpoint alone rebuilds the model. Every
check here runs at start-up, before any data is read, and names the key and what is allowed.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from darkraw.errors import ConfigError
from darkraw.instantiate import fits, type_message
from lightning_modules.network import RDB_VARIANTS


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


@dataclass
class NetConfig:
    rdb: str = "before"

    def validate(self) -> None:
        _check(self.rdb in RDB_VARIANTS, "model.rdb", self.rdb,
               f"choose one of {list(RDB_VARIANTS)} ('before' = the paper's RDB*)")


@dataclass
class LossConfig:
    ms_ssim_weight: float = 0.2
    win_size: int = 11
    win_sigma: float = 1.5

    def validate(self) -> None:
        _check(self.ms_ssim_weight >= 0, "loss.ms_ssim_weight", self.ms_ssim_weight,
               "must be >= 0 (the paper uses 0.2)")
        _check(self.win_size % 2 == 1 and self.win_size >= 3, "loss.win_size", self.win_size,
               "must be an odd integer >= 3 (the paper uses 11)")
        _check(self.win_sigma > 0, "loss.win_sigma", self.win_sigma, "must be > 0")


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def validate(self) -> None:
        _check(self.lr > 0, "optimizer.lr", self.lr, "must be > 0 (the paper uses 1e-4)")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               "optimizer.betas", self.betas, "must be two numbers in [0, 1)")
        _check(self.eps > 0, "optimizer.eps", self.eps, "must be > 0")
        _check(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class SchedulerConfig:
    """Step decay per iteration: lr * gamma^(milestones passed), never below ``min_lr``."""

    milestones: list[int] = field(default_factory=lambda: [500_000])
    gamma: float = 0.1
    min_lr: float = 1e-5

    def validate(self) -> None:
        _check(all(int(m) > 0 for m in self.milestones), "scheduler.milestones",
               self.milestones, "must be positive iteration numbers")
        _check(list(self.milestones) == sorted(self.milestones), "scheduler.milestones",
               self.milestones, "must be in increasing order")
        _check(0 < self.gamma <= 1, "scheduler.gamma", self.gamma,
               "must be in (0, 1] (1 disables decay; the paper uses 0.1)")
        _check(self.min_lr >= 0, "scheduler.min_lr", self.min_lr, "must be >= 0")


def _is_number(value: object) -> bool:
    return fits(value, frozenset({float}))


def _whole(value: object) -> bool:
    """An integer, or a float with no fraction: Hydra reads ``5e5`` as 500000.0."""
    return _is_number(value) and float(value).is_integer()  # type: ignore[arg-type]


#: What each field type accepts, and how a message says it. Checked before ``validate``, whose
#: comparisons would otherwise fail on a string with TypeError's traceback (optimizer.lr=abc).
#: String fields are left to ``validate``, which lists the allowed values.
_FIELD_TYPES: dict[Any, tuple[Any, str]] = {
    int: (lambda v: fits(v, frozenset({int})), "an integer"),
    float: (_is_number, "a number"),
    tuple[float, float]: (lambda v: isinstance(v, list | tuple) and len(v) == 2
                          and all(_is_number(b) for b in v), "a list of two numbers"),
    list[int]: (lambda v: isinstance(v, list | tuple) and all(_whole(m) for m in v),
                "a list of whole numbers"),
}


def _check_types(cls: type, values: Mapping[str, Any], group: str) -> None:
    """Each value against its field's annotation, with the key, the value and an example."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default if f.default is not MISSING
                else f.default_factory()  # type: ignore[misc]
                for f in fields(cls)}
    for key, value in values.items():
        if hints[key] not in _FIELD_TYPES:
            continue
        accepts, wanted = _FIELD_TYPES[hints[key]]
        if not accepts(value):
            example = defaults[key]
            raise ConfigError(type_message(f"{group}.{key}", value, wanted,
                                           list(example) if isinstance(example, tuple)
                                           else example))


def build(cls: type, values: Mapping[str, Any] | None, group: str) -> Any:
    """Make a validated settings object, rejecting unknown keys and wrong types by name."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{group}'; allowed: {sorted(known)}")
    _check_types(cls, values, group)
    if "betas" in values:
        values["betas"] = tuple(float(b) for b in values["betas"])
    if "milestones" in values:
        values["milestones"] = [int(m) for m in values["milestones"]]
    obj = cls(**values)
    obj.validate()
    return obj


def as_dict(obj: Any) -> dict[str, Any]:
    out = asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

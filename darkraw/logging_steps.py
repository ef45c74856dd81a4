"""The step axis Lightning logs on, for code that must land on it.

Lightning writes step metrics with its count of training batches stepped, not with
``trainer.global_step`` (optimizer steps), and only on the batches where that count + 1 is a
multiple of ``trainer.log_every_n_steps``; a value logged on another batch is dropped. The two
counts differ by one during the validation that follows a step (the count moves on after it),
and for good after a step the NaN guard skipped (no optimizer step, one more batch). Lightning
keeps the count in a private attribute; reading it here keeps that in one place.
"""

from __future__ import annotations

import lightning as L

from darkraw.errors import ConfigError


def batches_stepped(trainer: L.Trainer) -> int:
    """Training batches done before the current one: the ``step`` Lightning gives a value logged
    now (``trainer/global_step`` in W&B, ``step`` in metrics.csv)."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    stepped = getattr(epoch_loop, "_batches_that_stepped", None)
    return int(stepped) if isinstance(stepped, int) else trainer.global_step


def writes_step_metrics(trainer: L.Trainer, every_n_steps: int) -> bool:
    """Whether this training batch is on a multiple of ``every_n_steps`` on the logging axis:
    for an ``every_n_steps`` that is a multiple of ``log_every_n_steps`` (the callers check
    it), a step metric logged now reaches the loggers."""
    return (batches_stepped(trainer) + 1) % every_n_steps == 0


def off_the_logging_steps(key: str, every: object, log_every: int, why: str) -> ConfigError:
    """The error for an interval ``key`` that is not a multiple of ``log_every_n_steps``:
    values computed on the steps between are logged and silently dropped by Lightning."""
    return ConfigError(f"{key}={every!r} is not allowed: give a multiple of "
                       f"trainer.log_every_n_steps={log_every}{why}")

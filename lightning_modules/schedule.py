"""The paper's step learning-rate schedule, counted in optimiser iterations, not epochs.

Training is iteration-based (1M iterations, decay at 500k), so an epoch-stepped scheduler would
decay at the wrong time or never. The floor ``min_lr`` (1e-5 in the paper) also silently changes
what a "stronger decay" ablation means, so :func:`floor_warning` says when it bites.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(step: int, base_lr: float, milestones: Sequence[int], gamma: float,
                  min_lr: float) -> float:
    """Multiplier of ``base_lr`` at optimiser step ``step`` (0-based)."""
    decayed = base_lr * gamma ** bisect_right(list(milestones), step)
    # The floor limits decay only; it never raises an lr the user set below it.
    return max(decayed, min(min_lr, base_lr)) / base_lr


def step_decay_scheduler(optimizer: Optimizer, milestones: Sequence[int], gamma: float,
                         min_lr: float) -> LambdaLR:
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(
        optimizer, lambda step: lr_multiplier(step, base_lr, milestones, gamma, min_lr)
    )


def decay_after_the_run_warning(milestones: Sequence[int], gamma: float,
                                max_steps: int) -> str | None:
    """A message when a decay milestone falls at or after the run's last step, or None.

    A shortened recipe (``experiment=ablation_baseline trainer.max_steps=100000``, the decay at
    250k) then never decays: an ``lr_decay`` sweep so shortened trains identical arms.
    """
    late = [int(m) for m in milestones if int(m) >= max_steps]
    if gamma == 1 or not late:
        return None
    return (
        f"scheduler.milestones={list(milestones)}: the decay at step{'s' if len(late) > 1 else ''} "
        f"{', '.join(str(m) for m in late)} comes at or after trainer.max_steps={max_steps}, so "
        f"this run never reaches it and scheduler.gamma={gamma} has no effect there. Scale the "
        "milestones with the run (the recipes decay half-way: "
        f"scheduler.milestones=[{max_steps // 2}]), or set scheduler.gamma=1 to say so."
    )


def floor_warning(base_lr: float, milestones: Sequence[int], gamma: float,
                  min_lr: float) -> str | None:
    """A message when the floor replaces the configured decay, or None."""
    for k in range(1, len(milestones) + 1):
        wanted = base_lr * gamma**k
        if wanted < min_lr <= base_lr:
            return (
                f"scheduler.gamma={gamma} would take the lr to {wanted:.3g} after milestone "
                f"{milestones[k - 1]}, but scheduler.min_lr={min_lr:g} floors it there: the "
                f"effective decay factor is {min_lr / base_lr * (1 / gamma) ** (k - 1):.3g}. "
                "Set scheduler.min_lr=0 to get the configured decay."
            )
    return None

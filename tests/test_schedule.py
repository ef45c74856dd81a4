from __future__ import annotations

import pytest
import torch

from lightning_modules.schedule import floor_warning, lr_multiplier, step_decay_scheduler


def _lrs(steps: int, **kwargs: object) -> list[float]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = step_decay_scheduler(optimizer, **kwargs)  # type: ignore[arg-type]
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_paper_schedule_at_its_milestone() -> None:
    lrs = _lrs(12, milestones=[5], gamma=0.1, min_lr=1e-5)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[4] == pytest.approx(1e-4)  # last step before the milestone
    assert lrs[5] == pytest.approx(1e-5)  # decayed at iteration 5, not at an epoch end
    assert lrs[11] == pytest.approx(1e-5)


def test_schedule_steps_per_iteration_with_the_paper_numbers() -> None:
    args = dict(base_lr=1e-4, milestones=[500_000], gamma=0.1, min_lr=1e-5)
    assert lr_multiplier(0, **args) == 1.0
    assert lr_multiplier(499_999, **args) == 1.0
    assert lr_multiplier(500_000, **args) == pytest.approx(0.1)
    assert lr_multiplier(999_999, **args) == pytest.approx(0.1)


def test_floor_holds_the_lr_at_min_lr() -> None:
    lrs = _lrs(8, milestones=[2, 4], gamma=0.1, min_lr=1e-5)
    assert lrs[2] == pytest.approx(1e-5)
    assert lrs[4] == pytest.approx(1e-5)  # 1e-6 would be below the floor


def test_gamma_one_disables_decay() -> None:
    assert _lrs(6, milestones=[2], gamma=1.0, min_lr=1e-5) == pytest.approx([1e-4] * 6)


def test_floor_zero_gives_the_configured_strong_decay() -> None:
    lrs = _lrs(4, milestones=[2], gamma=0.02, min_lr=0.0)
    assert lrs[2] == pytest.approx(2e-6)


def test_floor_warns_when_it_replaces_the_configured_decay() -> None:
    message = floor_warning(1e-4, [250_000], 0.02, 1e-5)
    assert message is not None and "scheduler.min_lr=0" in message and "0.1" in message
    assert floor_warning(1e-4, [250_000], 0.1, 1e-5) is None
    assert floor_warning(1e-4, [250_000], 0.02, 0.0) is None


def test_floor_never_raises_a_small_base_lr() -> None:
    assert lr_multiplier(0, 1e-6, [10], 0.1, 1e-5) == 1.0


def test_a_decay_the_run_never_reaches_is_said() -> None:
    """The ablation recipe shortened to 100k steps keeps its decay at 250k: no decay at all."""
    from lightning_modules.schedule import decay_after_the_run_warning

    message = decay_after_the_run_warning([250000], 0.1, 100000)
    assert message is not None and message.startswith(
        "scheduler.milestones=[250000]: the decay at step 250000 comes at or after "
        "trainer.max_steps=100000")
    assert "scheduler.milestones=[50000]" in message
    # A milestone at the last step decays after the last optimiser step: no step uses it.
    assert decay_after_the_run_warning([100], 0.1, 100) is not None
    assert "steps 300, 400" in decay_after_the_run_warning([50, 300, 400], 0.5, 200)
    assert decay_after_the_run_warning([99], 0.1, 100) is None  # the last step decays
    assert decay_after_the_run_warning([250000], 1, 100000) is None  # gamma 1: nothing to miss
    assert decay_after_the_run_warning([], 0.1, 100) is None

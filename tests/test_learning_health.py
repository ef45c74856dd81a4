"""Runs that do not learn are stopped within a bounded number of steps, with the reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import darkraw.resolvers  # noqa: F401  (the resolvers the composed config uses)
from callbacks.learning_health import LearningHealth
from darkraw.errors import ConfigError, TrainingHealthError
from darkraw.health import raise_if_unhealthy
from darkraw.instantiate import instantiate_checked
from tests.health_helpers import (
    learning_health_config,
    logged,
    restoration_module,
    synthetic_datamodule,
    tiny_trainer,
)
from tests.helpers import FAST_TRAIN, REPO, fixture_data_overrides, run_entry_point

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_learning_rate_zero_is_stopped_on_plateau(synthetic_sid: Path, cache_dir: Path,
                                                  tmp_path: Path) -> None:
    # plateau_requires=any: the validation metrics are exactly flat at lr 0, while the mean
    # training loss of a 2-step window is noise (real windows average thousands of steps).
    health = LearningHealth(**learning_health_config(warn_after=1, patience=2,
                                                     plateau_requires="any"))
    trainer = tiny_trainer(tmp_path, [health], max_steps=40, val_every=2)
    with pytest.warns(UserWarning, match="training looks stuck"):
        trainer.fit(restoration_module(lr=1e-12), synthetic_datamodule(synthetic_sid, cache_dir))
    # First validation sets the best, two more without progress: stopped at the third.
    assert trainer.global_step == 6
    with pytest.raises(TrainingHealthError, match=r"(?s)not learning.*no learning progress.*"
                       r"val/psnr .*not improved by 0.05 for 2 validations.*optimizer\.lr"):
        raise_if_unhealthy(trainer)
    # The indicators are in the metrics, for dashboards.
    assert len(logged(tmp_path, "health/grad_norm")) >= 5
    assert len(logged(tmp_path, "health/pred_std")) == 3
    assert len(logged(tmp_path, "health/saturated_fraction")) == 3


def test_far_too_high_learning_rate_kills_the_network_and_is_stopped(
        synthetic_sid: Path, cache_dir: Path, tmp_path: Path) -> None:
    """lr 0.1 (1000x the paper's): one step and every output is clamped, no gradient left."""
    health = LearningHealth(**learning_health_config(collapse_patience=2,
                                                     vanishing_patience=3))
    trainer = tiny_trainer(tmp_path, [health], max_steps=40, val_every=2)
    trainer.fit(restoration_module(lr=0.1), synthetic_datamodule(synthetic_sid, cache_dir))
    assert trainer.global_step <= 5
    # Whichever sign shows first: 3 steps of zero gradient, or 2 validations of clamped output.
    with pytest.raises(TrainingHealthError, match=r"(?s)not learning.*(gradients vanished: "
                       r"global gradient norm 0 .* for 3 steps|predictions collapsed for 2 "
                       r"validations.*100.0% of pixels at the clamp limits)"):
        raise_if_unhealthy(trainer)
    saturated = logged(tmp_path, "health/saturated_fraction")
    assert saturated and max(saturated.values()) > 0.95  # and it shows in the metrics


def test_healthy_run_is_not_flagged(synthetic_sid: Path, cache_dir: Path,
                                    tmp_path: Path) -> None:
    """The shipped thresholds on a working set-up: no warning, no stop, early on."""
    health = LearningHealth(**learning_health_config())
    trainer = tiny_trainer(tmp_path, [health], max_steps=8, val_every=2)
    trainer.fit(restoration_module(lr=5e-4), synthetic_datamodule(synthetic_sid, cache_dir))
    assert trainer.global_step == 8 and health.failure is None
    raise_if_unhealthy(trainer)
    assert health.collapsed < health.collapse_patience and health.vanishing == 0


@pytest.mark.slow
def test_train_py_exits_loudly_when_not_learning(synthetic_sid: Path, tmp_path: Path) -> None:
    proc = run_entry_point(
        "train.py", *FAST_TRAIN, "logger=csv",
        *fixture_data_overrides(synthetic_sid), f"paths.root_dir={tmp_path}", "optimizer.lr=1e-12",
        "preflight.enabled=false", "trainer.max_steps=40", "callbacks.image_panel=null",
        "callbacks.learning_health.warn_after=1", "callbacks.learning_health.patience=2",
        "callbacks.learning_health.plateau_requires=any",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "darkraw: error: training stopped at step 6 because it is not learning" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_rank_votes_at_every_validation_whatever_it_saw() -> None:
    """A rank that skipped a vote (a collective under DDP) would hang the others: each check
    must call decide once per validation, improving or stalled, with or without predictions."""
    from types import SimpleNamespace

    votes: list[bool] = []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda flag, all: votes.append(flag)
                               or flag)
    trainer = SimpleNamespace(strategy=strategy, should_stop=False, global_step=0)
    health = LearningHealth(**learning_health_config(warn_after=2, patience=3))
    psnr = [10.0, 12.0, 14.0, 14.0, 14.0, 14.0]  # improves, then stalls
    for index, value in enumerate(psnr):
        health._pred_std = [0.2] if index % 2 else []  # some validations see no predictions
        health._saturated = [0.0] if index % 2 else []
        health._loss_sum, health._loss_count = 1.0, 1
        before = len(votes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            health._check_collapse(trainer, {"val/psnr": value}, index)
            health._check_plateau(trainer, {"val/psnr": value, "val/ssim": 0.5}, index)
        assert len(votes) == before + 2, index
    assert votes[-1] is True  # stalled for patience validations: the plateau vote says stop


def composed_learning_health(*overrides: str) -> LearningHealth:
    """The learning-health callback of train.py's config with command-line ``overrides``,
    composed by Hydra's parser and instantiated as train.py does."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.root_dir=/x"])
    health = instantiate_checked(cfg.callbacks.learning_health)
    assert isinstance(health, LearningHealth)
    return health


def plateau_alarms(losses: list[float], health: LearningHealth | None = None,
                   **overrides: object) -> tuple[int | None, int | None]:
    """The validation (1-based) of the first plateau warning and of the stop, for a run whose
    validation metrics never move and whose mean training loss is ``losses``."""
    from types import SimpleNamespace

    strategy = SimpleNamespace(reduce_boolean_decision=lambda flag, all: flag)
    trainer = SimpleNamespace(strategy=strategy, should_stop=False, global_step=0)
    health = health or LearningHealth(**learning_health_config(**overrides))
    warned = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for validation, loss in enumerate(losses, start=1):
            health._loss_sum, health._loss_count = loss, 1
            health._check_plateau(trainer, {"val/psnr": 20.0, "val/ssim": 0.5}, validation)
            if warned is None and any("training looks stuck" in str(w.message) for w in caught):
                warned = validation
            if trainer.should_stop:
                return warned, validation
    return warned, None


def test_plateau_counts_validations_since_each_metrics_best() -> None:
    """What docs/training-health.md says: the first validation sets the bests, so a flat run is
    warned at validation warn_after + 1 and stopped at patience + 1; a training loss that beats
    its best by min_delta by chance restarts the count (plateau_requires: all); a min_delta
    above that noise, or no train/loss monitor, gives the flat run's numbers back."""
    flat = [0.1] * 60
    assert plateau_alarms(flat) == (6, 21)
    dip = [*flat[:9], 0.0985, *flat[10:]]  # noise: 0.0015 under the best at validation 10
    assert plateau_alarms(dip) == (6, 30)  # the count restarts at 10: stop 20 later
    # The two ways docs/training-health.md gives, typed on the command line as it says.
    wider = composed_learning_health(
        "callbacks.learning_health.monitors.train_loss.min_delta=0.005")
    assert wider.tracks["train/loss"].min_delta == 0.005
    assert plateau_alarms(dip, wider) == (6, 21)
    without = composed_learning_health("callbacks.learning_health.monitors.train_loss=null")
    assert sorted(without.tracks) == ["val/psnr", "val/ssim"]
    assert plateau_alarms(dip, without) == (6, 21)


@pytest.mark.parametrize(("override", "message"), [
    ("+callbacks.learning_health.monitors.train_loss.min_dleta=0.005",
     r"^callbacks\.learning_health\.monitors\.train_loss has unknown key\(s\) \['min_dleta'\]"),
    ("callbacks.learning_health.monitors.val_psnr.min_delta=abc",
     r"^callbacks\.learning_health\.monitors\.val_psnr: .*min_delta='abc'"),
    ("callbacks.learning_health.monitors.val_psnr.mode=up",
     r"^callbacks\.learning_health\.monitors\.val_psnr: .*mode='up'"),
])
def test_a_wrong_monitor_setting_is_named(override: str, message: str) -> None:
    """Not ignored (a misspelt min_delta would leave the shipped one) nor float()'s traceback."""
    with pytest.raises(ConfigError, match=message):
        composed_learning_health(override)

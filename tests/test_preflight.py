"""The pre-flight check passes a working set-up and stops broken ones before training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from darkraw.preflight import PreflightError, run_preflight
from tests.health_helpers import (
    BrokenData,
    preflight_config,
    restoration_module,
    scaled_inputs,
    shuffled_targets,
    synthetic_datamodule,
)
from tests.helpers import FAST_TRAIN, fixture_data_overrides, run_entry_point

# Small enough for a CPU test, strict enough to separate a working set-up from lr 0.
QUICK = {"overfit": {"steps": 40, "max_loss_ratio": 0.85}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_working_setup_passes_and_leaves_training_untouched(synthetic_sid: Path,
                                                           cache_dir: Path) -> None:
    module = restoration_module(lr=5e-4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    report = run_preflight(module, synthetic_datamodule(synthetic_sid, cache_dir),
                           preflight_config(**QUICK))
    assert report is not None
    assert report.loss_ratio <= 0.85 and report.steps <= 40
    assert min(report.alignment) >= 0.3
    assert report.shuffled_alignment is None or report.shuffled_alignment < min(report.alignment)
    # The check trained a copy: same weights, same RNG stream for the real run.
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_learning_rate_zero_fails_the_overfit(synthetic_sid: Path, cache_dir: Path) -> None:
    with pytest.raises(PreflightError, match=r"overfit failed.*lr 1e-12.*optimizer\.lr") as info:
        run_preflight(restoration_module(lr=1e-12), synthetic_datamodule(synthetic_sid, cache_dir),
                      preflight_config(overfit={"steps": 10, "max_loss_ratio": 0.85}))
    assert "x1.00" in str(info.value)  # the loss did not move at all


def test_shuffled_targets_fail_the_alignment_check(synthetic_sid: Path, cache_dir: Path) -> None:
    data = BrokenData(synthetic_datamodule(synthetic_sid, cache_dir), shuffled_targets)
    with pytest.raises(PreflightError, match="inputs do not match their targets.*paired"):
        run_preflight(restoration_module(), data, preflight_config(**QUICK))


@pytest.mark.parametrize("change, message", [
    (scaled_inputs(1000.0), r"input values span .* outside \[0, 300\]"),
    (lambda i, s, d: {**s, "target": s["target"] * 0}, "black targets"),
    (lambda i, s, d: {**s, "input": s["input"] * math.nan}, "NaN/inf values in input"),
    (lambda i, s, d: {**s, "amplification": s["amplification"] * 0 + 1000}, "amplification"),
])
def test_broken_data_fails_the_data_check(synthetic_sid: Path, cache_dir: Path, change,
                                          message: str) -> None:
    data = BrokenData(synthetic_datamodule(synthetic_sid, cache_dir), change)
    with pytest.raises(PreflightError, match=message):
        run_preflight(restoration_module(), data, preflight_config(**QUICK))


def test_disabled_check_does_nothing(synthetic_sid: Path, cache_dir: Path) -> None:
    data = BrokenData(synthetic_datamodule(synthetic_sid, cache_dir), shuffled_targets)
    assert run_preflight(restoration_module(), data, preflight_config(enabled=False)) is None


@pytest.mark.slow
def test_train_py_exits_loudly_before_training(synthetic_sid: Path, tmp_path: Path) -> None:
    proc = run_entry_point(
        "train.py", *FAST_TRAIN, "logger=csv",
        *fixture_data_overrides(synthetic_sid), f"paths.root_dir={tmp_path}", "optimizer.lr=1e-12",
        "preflight.overfit.steps=10", check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "darkraw: error: pre-flight overfit failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # it never started training


@pytest.mark.parametrize(("override", "message"), [
    ("+preflight.overfit.step=5", r"^preflight\.overfit\.step is not a pre-flight setting: did "
                                  r"you mean preflight\.overfit\.steps\?"),
    ("preflight.samples=abc", r"^preflight\.samples='abc' must be an integer, not a string$"),
    ("preflight.checks.min_alignment=high",
     r"^preflight\.checks\.min_alignment='high' must be a number, not a string$"),
    ("preflight.checks.input_range=5", r"^preflight\.checks\.input_range=5 must be a \[low, "
                                       r"high\] pair$"),
])
def test_a_wrong_setting_is_named_before_any_data_is_read(tmp_path: Path, override: str,
                                                          message: str) -> None:
    """Not silently replaced by the shipped value (a misspelt key), nor int()'s traceback."""
    from hydra import compose, initialize_config_dir

    import darkraw.resolvers  # noqa: F401  (the resolvers the composed config uses)
    from darkraw.errors import ConfigError
    from tests.helpers import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[override, "paths.root_dir=/x"])
    # A data module with no data: the settings must be refused before it is asked for any.
    data = synthetic_datamodule(tmp_path / "absent", tmp_path / "cache")
    with pytest.raises(ConfigError, match=message):
        run_preflight(restoration_module(), data, cfg.preflight)
    assert not (tmp_path / "absent").exists()

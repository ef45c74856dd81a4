"""The speed benchmark's bookkeeping: which file a run writes, and the accuracy it reports."""

from __future__ import annotations

import sys

import torch

from lightning_modules.inference import prepare_for_inference
from tests.helpers import REPO, perturbed_net

sys.path.insert(0, str(REPO / "benchmarks"))
import speed  # the benchmark scripts are not a package: imported from their folder


def test_gpu_and_quick_runs_do_not_overwrite_the_cpu_figures() -> None:
    assert speed.output_stem(["cpu"], quick=False) == "speed"
    assert speed.output_stem(["cpu"], quick=True) == "speed_quick"
    assert speed.output_stem(["cuda"], quick=False) == "speed_cuda"
    assert speed.output_stem(["cpu", "cuda"], quick=True) == "speed_cpu_cuda_quick"


def test_warm_up_reports_each_forms_difference_from_the_training_form() -> None:
    net = perturbed_net()
    x = torch.rand(1, 4, 32, 32) * 4

    def broken(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this")

    configs = {
        "training form": speed.eager_runner(net),
        "deployed": prepare_for_inference(net),
        "bf16": prepare_for_inference(net, dtype="bf16"),
        "broken": broken,
    }
    errors = speed.warm_up(configs, x, warmup=2, sync=lambda: None)
    assert errors["training form"] == (0.0, 0.0)
    assert 0 < errors["deployed"][0] < 1e-4  # float32 rounding of another summation order
    assert errors["bf16"][0] > 10 * errors["deployed"][0]  # an 8-bit mantissa shows
    assert errors["bf16"][1] <= errors["bf16"][0]
    # A form that fails is reported and left out, not allowed to sink the whole run.
    assert configs["broken"] == "skipped: RuntimeError: no kernel for this"
    assert "broken" not in errors

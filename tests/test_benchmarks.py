"""The speed benchmark's bookkeeping: which file a run writes, and the accuracy it reports."""

from __future__ import annotations

import sys

import pytest
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


def test_training_throughput_runs_the_precision_it_reports() -> None:
    net = perturbed_net()
    seen: list[torch.dtype] = []
    net.fuse1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    # 96 packed = 192 full-resolution pixels: the smallest side MS-SSIM's five scales accept.
    fp32 = speed.training_throughput("cpu", 1, 96, iterations=1, precision="32", net=net)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = speed.training_throughput("cpu", 1, 96, iterations=1, precision="bf16-mixed", net=net)
    assert set(seen) == {torch.bfloat16}
    assert (fp32["precision"], bf16["precision"]) == ("32", "bf16-mixed")
    assert bf16["iterations"] == 1 and bf16["iterations_per_s"] > 0
    with pytest.raises(ValueError, match="16-mixed"):
        speed.training_throughput("cpu", 1, 96, iterations=1, precision="16-mixed", net=net)


def test_gpu_runs_time_more_training_steps_and_both_precisions() -> None:
    args = speed.parse_args([])
    assert speed.training_iterations("cpu", args) == 3
    assert speed.training_iterations("cuda", args) == 20
    assert speed.training_iterations("cuda", speed.parse_args(["--train-iters", "5"])) == 5
    assert speed.training_precisions("cuda") == ("32", "bf16-mixed")
    assert speed.training_precisions("cpu") == ("32",)


def test_data_loading_benchmark_writes_its_figures(tmp_path) -> None:
    """A tiny real run: every figure is measured (none left at a default) and both files agree."""
    import json

    import data_loading

    out = tmp_path / "results"
    args = ["--root", str(tmp_path / "work"), "--height", "128", "--width", "192", "--scenes",
            "2", "--patch-size", "64", "--patches", "8", "--cold-patches", "2",
            "--decode-patches", "2", "--batch-size", "2", "--loader-workers", "1", "--out",
            str(out)]
    assert data_loading.main(args) == 0
    result = json.loads((out / "data_loading.json").read_text())
    assert result["setup"]["train_pairs"] == 2
    # Sizes and files/s count every split's entries, as the check reads them: the training
    # pairs alone gave a cache smaller than the one verified, and too few files per second.
    assert result["cache_files"] == 8  # 4 scenes (2 train, 1 val, 1 test): a short and a long
    assert result["cache_mb"] == pytest.approx(result["cache_total_mb"], rel=0.01)
    assert result["cache_build_files_per_s"] == pytest.approx(8 / result["cache_build_s"])
    assert result["verify_s"] > 0 and result["verify_mb_per_s"] > 0
    assert result["cached_patches_per_s"] > 0 and result["decode_per_patch_patches_per_s"] > 0
    assert result["loader"]["workers"] == 1
    text = (out / "data_loading.md").read_text()
    assert "content check (`--verify`" in text and f"{result['verify_s']:.2f} s" in text

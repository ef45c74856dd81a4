"""Speed of the restoration network: parameters, GMac, inference latency, training throughput.

Why: the paper's claim is real-time restoration at 41.38 GMac for a 2048 x 4096 image. This
measures what darkraw's network costs, in which form it should be deployed (training form with
weight norm, folded, channels-last, compiled, ONNX Runtime; CUDA streams and bf16 on a GPU), and
how fast it trains, and writes benchmarks/results/speed.{json,md,png}.

All ratios compare configurations timed in the same run, interleaved (one call of each in turn),
so that load from other processes hits all of them alike.

    nice python benchmarks/speed.py                 # CPU, plus the GPU when there is one
    python benchmarks/speed.py --quick              # small sizes, few repeats (a smoke run)
    python benchmarks/speed.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_modules.inference import fold_weight_norm, prepare_for_inference  # noqa: E402
from lightning_modules.losses import L1MSSSIMLoss  # noqa: E402
from lightning_modules.network import DarkRestorationNet, count_parameters  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PAPER_GMAC = 41.38


@dataclass(frozen=True)
class Size:
    """A full-resolution size and the packed input the network sees (half of it)."""

    label: str
    full_h: int
    full_w: int
    note: str = ""

    @property
    def packed(self) -> tuple[int, int]:
        return self.full_h // 2, self.full_w // 2


FULL_SIZES = (
    Size("2048x4096", 2048, 4096),
    Size("4K", 2176, 3840, "2160x3840 padded to 2176x3840 (multiples of 32)"),
)
QUICK_SIZES = (
    Size("512x1024", 512, 1024),
    Size("4K/4", 544, 960, "540x960 padded to 544x960 (multiples of 32)"),
)


@dataclass
class Timing:
    device: str
    size: str
    config: str
    median_ms: float | None
    min_ms: float | None = None
    runs: int = 0
    note: str = ""
    max_abs_diff_vs_training_form: float | None = None
    mean_abs_diff_vs_training_form: float | None = None
    speedup_vs_training_form: float | None = None
    speedup_of_min_vs_training_form: float | None = None


@dataclass
class Results:
    environment: dict[str, Any]
    params: dict[str, int]
    gmac: dict[str, Any]
    latency: list[Timing] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)


# --- environment, parameters, complexity ---------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(devices: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    env = {
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": version("onnxruntime"), "ptflops": version("ptflops"),
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "devices": devices, "date": time.strftime("%Y-%m-%d %H:%M"),
        # Other processes on the machine make timings noisy; this says how busy it was.
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    if "cuda" in devices:
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        # fp32 convs on Ampere and later run in TF32 unless this is off: "fp32" rows mean that.
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def gmac(model: torch.nn.Module, packed_hw: tuple[int, int], backend: str) -> float:
    from ptflops import get_model_complexity_info

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = get_model_complexity_info(
            model, (4, *packed_hw), as_strings=False, backend=backend,
            print_per_layer_stat=False, verbose=False,
        )
    return float(macs) / 1e9


def complexity(net: DarkRestorationNet, folded: torch.nn.Module, size: Size) -> dict[str, Any]:
    """GMac by both ptflops backends, on both forms, scaled to 2048x4096 when measured smaller.

    The network's cost is exactly proportional to the pixel count (every layer runs at a fixed
    fraction of the input resolution), so a smaller measurement scales without error.
    """
    scale = (1024 * 2048) / (size.packed[0] * size.packed[1])
    figures = {
        f"{backend}/{form}": round(gmac(model, size.packed, backend) * scale, 4)
        for backend in ("pytorch", "aten")
        for form, model in (("training_form", net), ("folded", folded))
    }
    return {"measured_at_full_res": size.label, "scale_to_2048x4096": scale,
            "gmac_at_2048x4096": figures, "paper": PAPER_GMAC}


def explain_gmac(figures: dict[str, float]) -> list[str]:
    activations = figures["pytorch/folded"] - figures["aten/folded"]
    return [
        f"ptflops `pytorch` backend, folded network: {figures['pytorch/folded']:.2f} GMac "
        f"(paper: {PAPER_GMAC}; the authors' complexity script counts a copy of the network "
        "built from plain nn.Conv2d, which this backend counts the same way). It counts "
        f"convolutions (with bias) and one MAC per output element of each LeakyReLU "
        f"({activations:.3f} GMac).",
        f"ptflops `pytorch` backend, training form: {figures['pytorch/training_form']:.3f} GMac. "
        "It finds layers by exact module type; weight norm (torch.nn.utils.parametrizations) "
        "turns every conv into a generated `ParametrizedConv2d` class, so no conv is counted "
        "and only the LeakyReLUs remain. Count the folded network (or use `aten`).",
        f"ptflops `aten` backend: {figures['aten/folded']:.2f} GMac on both forms. It counts "
        "the aten convolution calls whatever the module type, but not element-wise ops "
        f"(LeakyReLU, residual adds), hence {activations:.3f} GMac less than `pytorch`.",
    ]


# --- latency -------------------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def timed_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor,
               sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn(x)
    sync()
    return (time.perf_counter() - start) * 1e3


def onnx_runner(folded: torch.nn.Module, folder: Path) -> Callable[[torch.Tensor], Any]:
    from lightning_modules.export import export_onnx, onnx_session, run_onnx

    path = export_onnx(folded, folder / "speed.onnx")
    session = onnx_session(path)
    return lambda x: run_onnx(session, x)


def eager_runner(net: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
    """A network's own forward, without autograd: the training form (weight norm recomputed each
    call) or the plain fold, with neither the deployed decoder nor a layout change."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    return run


def cpu_configs(net: DarkRestorationNet, folded: torch.nn.Module, args: argparse.Namespace,
                folder: Path) -> dict[str, Callable[[torch.Tensor], Any] | str]:
    """Name -> callable, or -> the reason it is skipped."""
    configs: dict[str, Callable[[torch.Tensor], Any] | str] = {
        "training form": eager_runner(net),
        "folded": eager_runner(folded),
        "deployed (folded, cat-free output)": prepare_for_inference(net, channels_last=False),
        "deployed + channels-last (default)": prepare_for_inference(net, channels_last=True),
    }
    configs["compiled (deployed + channels-last)"] = (
        "skipped (--skip-compile)" if args.skip_compile
        else prepare_for_inference(net, channels_last=True, compile={"dynamic": False})
    )
    # bf16 convs are fast only on CPUs with AMX or AVX-512 BF16 (slower than fp32 elsewhere);
    # the error column says what the 8-bit mantissa costs.
    configs["deployed + channels-last, bf16"] = prepare_for_inference(
        net, channels_last=True, dtype="bf16")
    if args.skip_onnx:
        configs["ONNX Runtime (CPU EP)"] = "skipped (--skip-onnx)"
    else:
        try:
            configs["ONNX Runtime (CPU EP)"] = onnx_runner(folded, folder)
        except Exception as error:  # report and go on: the other figures are still useful
            configs["ONNX Runtime (CPU EP)"] = f"skipped: export failed ({error})"
    return configs


def cuda_configs(net: DarkRestorationNet, args: argparse.Namespace
                 ) -> dict[str, Callable[[torch.Tensor], Any] | str]:
    # As trainer=gpu sets it: cuDNN picks the fastest algorithm per shape in the warm-up calls.
    torch.backends.cudnn.benchmark = True
    training = DarkRestorationNet(rdb=net.rdb)
    training.load_state_dict(net.state_dict())
    configs: dict[str, Callable[[torch.Tensor], Any] | str] = {
        "training form": eager_runner(training.cuda().eval()),
    }
    for dtype in ("fp32", "bf16"):
        for concurrent in (False, True):
            name = f"deployed + channels-last, {dtype}, " + ("streams" if concurrent
                                                              else "sequential")
            configs[name] = prepare_for_inference(net, device="cuda", dtype=dtype,
                                                  concurrent_encoders=concurrent)
        configs[f"compiled, {dtype}, sequential"] = (
            "skipped (--skip-compile)" if args.skip_compile
            else prepare_for_inference(net, device="cuda", dtype=dtype,
                                       concurrent_encoders=False, compile={"dynamic": False})
        )
    return configs


def warm_up(configs: dict[str, Callable | str], x: torch.Tensor, warmup: int,
            sync: Callable[[], None]) -> dict[str, tuple[float, float]]:
    """First calls pay one-off costs (allocations, oneDNN primitives, compilation).

    The first call's output is also kept to compare with the training form's: a faster form is
    only worth having if it computes the same image. Returns name -> (max, mean) |difference|.
    """
    outputs: dict[str, torch.Tensor] = {}
    for name, fn in list(configs.items()):
        if isinstance(fn, str):
            continue
        try:
            outputs[name] = torch.as_tensor(fn(x)).float().cpu()
            for _ in range(warmup - 1):
                timed_call(fn, x, sync)
        except Exception as error:  # a failed compile must not sink the whole benchmark
            configs[name] = f"skipped: {type(error).__name__}: {str(error)[:200]}"
    reference = outputs.get("training form")
    if reference is None:
        return {}
    return {name: (float((out - reference).abs().max()), float((out - reference).abs().mean()))
            for name, out in outputs.items()}


def measure_size(configs: dict[str, Callable | str], device: str, size: Size,
                 args: argparse.Namespace) -> list[Timing]:
    sync = synchronizer(device)
    x = torch.rand(1, 4, *size.packed, device=device) * 4
    errors = warm_up(configs, x, args.warmup, sync)
    runs: dict[str, list[float]] = {n: [] for n, fn in configs.items() if not isinstance(fn, str)}
    for _ in range(args.repeats):
        for name in runs:  # interleaved: drift in machine load hits every config alike
            runs[name].append(timed_call(configs[name], x, sync))
    timings = []
    for name, fn in configs.items():
        if isinstance(fn, str):
            timings.append(Timing(device, size.label, name, None, note=fn))
        else:
            timings.append(Timing(device, size.label, name, statistics.median(runs[name]),
                                  min(runs[name]), len(runs[name]), size.note,
                                  *errors.get(name, (None, None))))
    base = next((t for t in timings if t.config == "training form"), None)
    for t in timings:
        if base and base.median_ms and t.median_ms and base.min_ms and t.min_ms:
            t.speedup_vs_training_form = base.median_ms / t.median_ms
            t.speedup_of_min_vs_training_form = base.min_ms / t.min_ms
    return timings


# --- training throughput -------------------------------------------------------------------------


#: Lightning's names for the precisions timed, and the autocast dtype each means.
TRAINING_PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16}


def training_throughput(device: str, batch: int, packed: int, iterations: int,
                        precision: str = "32",
                        net: torch.nn.Module | None = None) -> dict[str, Any]:
    """Steps/s of the training step the module runs: forward, L1 + MS-SSIM, backward, Adam.

    ``precision`` is ``trainer.precision``'s value: "bf16-mixed" runs forward and loss under
    bf16 autocast, as Lightning does (the loss itself computes MS-SSIM in float32). ``net``
    defaults to a fresh :class:`DarkRestorationNet`.
    """
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {sorted(TRAINING_PRECISIONS)}")
    autocast_dtype = TRAINING_PRECISIONS[precision]
    net = (net or DarkRestorationNet()).to(device).train()
    criterion = L1MSSSIMLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 4, packed, packed, device=device) * 4
    target = torch.rand(batch, 3, 2 * packed, 2 * packed, device=device)
    sync = synchronizer(device)

    def step(_: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = (nullcontext() if autocast_dtype is None
                    else torch.autocast(device, dtype=autocast_dtype))
        with autocast:
            loss = criterion(net(x), target).total
        loss.backward()
        optimizer.step()

    timed_call(step, x, sync)  # warm-up
    times = [timed_call(step, x, sync) for _ in range(iterations)]
    seconds = statistics.median(times) / 1e3
    return {"device": device, "precision": precision, "batch": batch,
            "full_res": f"{2 * packed}x{2 * packed}",
            "packed": f"{batch}x4x{packed}x{packed}", "iterations": iterations,
            "median_step_s": round(seconds, 4), "iterations_per_s": round(1 / seconds, 3),
            "images_per_s": round(batch / seconds, 2)}


# --- output --------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def fps(t: Timing) -> float | None:
    return None if not t.median_ms else 1e3 / t.median_ms


def latency_cells(t: Timing) -> list[str]:
    """One row of the latency table, shared by the terminal and the Markdown output."""
    return [t.device, t.size, t.config, fmt(t.median_ms), fmt(t.min_ms), str(t.runs),
            fmt(fps(t), 2), fmt(t.speedup_vs_training_form, 2),
            fmt(t.speedup_of_min_vs_training_form, 2),
            fmt_error(t.max_abs_diff_vs_training_form), fmt_error(t.mean_abs_diff_vs_training_form),
            t.note]


LATENCY_COLUMNS = ("device", "size", "config", "median ms", "min ms", "runs", "fps",
                   "x training form", "x (min)", "max |diff|", "mean |diff|", "note")


def print_tables(results: Results) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)  # not the 80 columns rich assumes without a terminal
    table = Table(title="Latency (median of interleaved runs, batch 1)")
    for column in LATENCY_COLUMNS:
        table.add_column(column)
    for t in results.latency:
        table.add_row(*latency_cells(t))
    console.print(table)
    gm = Table(title="GMac at 2048x4096 (packed 1x4x1024x2048)")
    gm.add_column("ptflops backend / form")
    gm.add_column("GMac")
    for key, value in results.gmac["gmac_at_2048x4096"].items():
        gm.add_row(key, f"{value:.3f}")
    console.print(gm)
    for row in results.training:
        console.print(f"training on {row['device']} ({row['precision']}): "
                      f"{row['iterations_per_s']} it/s "
                      f"({row['images_per_s']} images/s), batch {row['packed']}")
    console.print(f"parameters: {results.params}")


def markdown(results: Results) -> str:
    env = results.environment
    lines = [
        "# Speed benchmark", "",
        f"Machine: {env['cpu']}, {env['torch_threads']} torch threads"
        + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; torch {env['torch']}, onnxruntime {env['onnxruntime']}, ptflops {env['ptflops']}; "
        f"{env['date']}; 1-minute load average at start {env['load_average_1min_at_start']} on "
        f"{env['cpu_cores']} cores (other processes share the machine: compare configs within "
        "this run, not with other runs).", "",
        "## Parameters", "",
        f"- training form (weight norm, g and v): {results.params['training_form']:,}",
        f"- folded (g * v / ||v|| baked in): {results.params['folded']:,}", "",
        "## Complexity at 2048x4096 (packed 1x4x1024x2048)", "",
        "| ptflops backend / form | GMac |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in results.gmac["gmac_at_2048x4096"].items()]
    lines += ["", *[f"- {line}" for line in results.gmac["explanation"]]]
    if results.gmac["measured_at_full_res"] != "2048x4096":
        lines.append(f"- Measured at {results.gmac['measured_at_full_res']} and scaled "
                     f"x{results.gmac['scale_to_2048x4096']:g} (cost is linear in pixels).")
    lines += ["", "## Inference latency (batch 1, median of interleaved runs)", "",
              "x training form: speed-up over the training form (weight norm) in the same run, "
              "from the medians and from the minima. |diff|: max and mean absolute difference "
              "from the training form's output (sRGB in [0, 1]) on the same random input.", "",
              "| " + " | ".join(LATENCY_COLUMNS) + " |",
              "|" + "---|" * len(LATENCY_COLUMNS)]
    lines += ["| " + " | ".join(latency_cells(t)) + " |" for t in results.latency]
    lines += ["", "## Training throughput (forward, L1 + MS-SSIM, backward, Adam)", "",
              "| device | precision | batch (packed) | full res | median step s | it/s "
              "| images/s |",
              "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['device']} | {r['precision']} | {r['packed']} | {r['full_res']} | "
        f"{r['median_step_s']} | "
        f"{r['iterations_per_s']} | {r['images_per_s']} |"
        for r in results.training
    ]
    return "\n".join(lines) + "\n"


def bar_chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in results.latency if t.median_ms is not None]
    groups = list(dict.fromkeys((t.device, t.size) for t in rows))  # in the order measured
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.2 + 0.5 * len(rows)), squeeze=False)
    for ax, (device, size) in zip(axes[:, 0], groups, strict=True):
        group = [t for t in rows if (t.device, t.size) == (device, size)]
        ax.barh([t.config for t in group], [t.median_ms for t in group], color="tab:blue")
        for i, t in enumerate(group):
            ax.text(t.median_ms, i, f" {t.median_ms:.3g} ms", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{device}, {size}: median latency, batch 1", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_xlim(0, max(t.median_ms for t in group) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Results, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.{suffix}" for suffix in ("json", "md", "png")]
    paths[0].write_text(json.dumps(asdict(results), indent=2) + "\n")
    paths[1].write_text(markdown(results))
    bar_chart(results, paths[2])
    return paths


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all = CPU, plus CUDA when available")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per config")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per config")
    parser.add_argument("--train-iters", type=int, default=None,
                        help="timed training steps per device and precision "
                             "(default: 3 on the CPU, 20 on a GPU; 2 with --quick)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.sizes = QUICK_SIZES if args.quick else FULL_SIZES
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.warmup = args.warmup or (1 if args.quick else 2)
    return args


def training_iterations(device: str, args: argparse.Namespace) -> int:
    """A GPU step takes milliseconds, so a median of 3 would be mostly noise there."""
    if args.train_iters:
        return args.train_iters
    return 2 if args.quick else (20 if device == "cuda" else 3)


def training_precisions(device: str) -> tuple[str, ...]:
    """bf16 autocast is what a GPU user trains in (trainer.precision=bf16-mixed); on a CPU one
    fp32 row says what a smoke run costs."""
    return ("32", "bf16-mixed") if device == "cuda" else ("32",)


def output_stem(devices: list[str], quick: bool) -> str:
    """``speed`` for the CPU figures of this project's machine; a GPU run (on another machine)
    and quick smoke runs write files of their own instead of overwriting those."""
    stem = "speed" if devices == ["cpu"] else "speed_" + "_".join(devices)
    return stem + "_quick" if quick else stem


def devices_for(choice: str) -> list[str]:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here; use --device cpu")
    if choice == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [choice]


def main(argv: list[str] | None = None) -> Results:
    args = parse_args(argv)
    devices = devices_for(args.device)
    torch.manual_seed(0)
    net = DarkRestorationNet().eval()
    folded = fold_weight_norm(net).eval()
    results = Results(
        environment=environment(devices),
        params={"training_form": count_parameters(net), "folded": count_parameters(folded)},
        gmac=complexity(net, folded, args.sizes[0]),
    )
    results.gmac["explanation"] = explain_gmac(results.gmac["gmac_at_2048x4096"])
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            configs = (cpu_configs(net, folded, args, Path(tmp)) if device == "cpu"
                       else cuda_configs(net, args))
            for size in args.sizes:
                print(f"timing {device} at {size.label} ...", flush=True)
                results.latency += measure_size(configs, device, size, args)
    batch, packed = (2, 128) if args.quick else (8, 256)
    for device in devices:
        for precision in training_precisions(device):
            print(f"training throughput on {device}, precision {precision} ...", flush=True)
            results.training.append(training_throughput(
                device, batch, packed, training_iterations(device, args), precision))
    print_tables(results)
    written = write_outputs(results, args.out, output_stem(devices, args.quick))
    print("wrote " + ", ".join(str(p) for p in written))
    return results


if __name__ == "__main__":
    main()

"""Pre-flight check: seconds of testing before hours of training.

The reproduction that trained 500k iterations at SSIM 0.52 would have failed one of these within a
minute. Before ``trainer.fit`` (``darkraw/training.py``; skipped on resume, off with
``preflight.enabled=false``, every threshold in ``conf/preflight/default.yaml``):

1. **Data sanity** on a few training samples: finite values; input (amplified packed raw) and
   target within their ranges; amplification within [1, 300]; no target that is all black or all
   white; and input/target *alignment*: the correlation between the naive rendering of each input
   (``naive_rgb``, as luminance, both block-averaged to ``alignment_size`` pixels) and its own
   target must be clearly positive, and clearly higher than with another sample's target (a
   shuffled pairing). Pairs whose targets look alike (same scene, overlapping crops) are left out
   of that comparison, since swapping them proves nothing.
2. **Overfit one batch**: a *copy* of the model (the real one, its optimizer and the global RNG
   streams are untouched, so a run with the check trains exactly like one without) is trained
   with the configured optimizer and learning rate for up to ``overfit.steps`` steps on one small
   fixed batch. A healthy pipeline drives the loss well below its start; if it ends above
   ``overfit.max_loss_ratio`` times the start (lr 0 or tiny, a loss that ignores the output,
   gradients cut somewhere, clamped outputs...), the run fails before it starts.

Failures raise :class:`PreflightError` (a :class:`~darkraw.errors.TrainingHealthError`): what was
seen, in numbers, and what to check; ``train.py`` prints it and exits 1.

DDP: the check runs on global rank 0 only (from the launcher's environment, as nothing is
initialised yet), before ranks synchronise; the others go straight to ``trainer.fit`` and wait
there. A failure on rank 0 exits it; under SLURM, ``srun --kill-on-bad-exit`` ends the others.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, default_collate

from darkraw.errors import ConfigError, TrainingHealthError
from darkraw.instantiate import describe, fits, type_message
from darkraw.suggest import did_you_mean
from lightning_modules.module import naive_rgb

log = logging.getLogger(__name__)

HOW_TO_SKIP = ("(The check runs before every new run; preflight.enabled=false skips it, which "
               "is only sensible once you know why it fails.)")


class PreflightError(TrainingHealthError):
    """The data or a one-batch overfit looked wrong before training started."""


@dataclass
class PreflightReport:
    """What the check saw, for logs and tests."""

    samples: int = 0
    alignment: list[float] = field(default_factory=list)
    shuffled_alignment: float | None = None
    start_loss: float = math.nan
    final_loss: float = math.nan
    best_loss: float = math.nan
    steps: int = 0
    seconds: float = 0.0

    @property
    def loss_ratio(self) -> float:
        return self.best_loss / self.start_loss if self.start_loss > 0 else math.nan


#: The shipped settings: the layout and value kinds that the pre-flight options must keep.
SHIPPED_SETTINGS = Path(__file__).resolve().parents[1] / "conf" / "preflight" / "default.yaml"
#: A [low, high] pair of numbers; every other setting is one scalar kind (instantiate's).
RANGE = "a [low, high] pair"
NUMBERS = frozenset({float})


def _kind_of(value: Any) -> Any:
    """A shipped value's kind (nested for a mapping): what a setting in its place must be."""
    if isinstance(value, Mapping):
        return {key: _kind_of(item) for key, item in value.items()}
    if isinstance(value, bool | int | float):
        return frozenset({type(value)})
    if isinstance(value, list | tuple) and len(value) == 2:
        return RANGE
    raise TypeError(f"{SHIPPED_SETTINGS}: no kind for {value!r}")  # a new kind of setting


@functools.cache
def shipped_schema() -> dict[str, Any]:
    """The kinds of conf/preflight/default.yaml's settings, read from the file itself: the
    config stays the one place that says which settings exist. A misspelt key would otherwise
    be ignored (its shipped value used instead), a wrong type end in int()'s traceback."""
    return _kind_of(OmegaConf.to_container(OmegaConf.load(SHIPPED_SETTINGS), resolve=False))


def check_options(options: Mapping[str, Any], schema: Mapping[str, Any] | None = None,
                  prefix: str = "preflight") -> None:
    """Refuse a key the check does not read, or a value of the wrong kind, by its full name."""
    schema = shipped_schema() if schema is None else schema
    for key, value in options.items():
        name = f"{prefix}.{key}"
        if key not in schema:
            hint = did_you_mean(key, schema, f"{prefix}.") or f"it has {sorted(schema)}"
            raise ConfigError(f"{name} is not a pre-flight setting: {hint} (see "
                              "conf/preflight/default.yaml)")
        kind = schema[key]
        if isinstance(kind, Mapping):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(type_message(name, value, "a mapping"))
            check_options(value or {}, kind, name)
            continue
        if kind == RANGE:
            good = (isinstance(value, list | tuple) and len(value) == 2
                    and all(fits(v, NUMBERS) for v in value))
        else:
            good = fits(value, kind)
        if not good:
            raise ConfigError(type_message(name, value, RANGE if kind == RANGE else describe(kind)))


def check_preflight_options(cfg: Mapping[str, Any] | DictConfig | None) -> None:
    """:func:`check_options` on the composed ``preflight`` group (train.py, at start-up)."""
    check_options(_plain(cfg))


# ------------------------------------------------------------------------------- entry


def global_rank_from_env() -> int:
    """This process's rank as the launcher set it, before any process group exists."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _plain(cfg: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg or {})


def run_preflight(module: L.LightningModule, datamodule: L.LightningDataModule,
                  cfg: Mapping[str, Any] | DictConfig | None,
                  device: torch.device | str = "cpu") -> PreflightReport | None:
    """Check the data and overfit one batch; raise :class:`PreflightError` if either fails.

    Returns None when the check is disabled or this is not global rank 0.
    """
    options = _plain(cfg)
    check_options(options)
    if not options.get("enabled", True):
        log.warning("pre-flight check disabled (preflight.enabled=false)")
        return None
    if global_rank_from_env() != 0:
        return None
    checks, overfit = dict(options.get("checks") or {}), dict(options.get("overfit") or {})
    started = time.perf_counter()
    # Leave every RNG stream as it was: with or without the check, training is identical.
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            torch.manual_seed(int(options.get("seed", 0)))
            batch = draw_samples(datamodule, int(options.get("samples", 8)))
            report = check_data(batch, checks)
            overfit_one_batch(module, batch, overfit, torch.device(device), report)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    report.seconds = time.perf_counter() - started
    log.info(
        "pre-flight check passed in %.1f s: %d samples, alignment %s (shuffled %s); one-batch "
        "loss %.4f -> %.4f (x%.2f) in %d steps", report.seconds, report.samples,
        ", ".join(f"{a:.2f}" for a in report.alignment),
        "n/a" if report.shuffled_alignment is None else f"{report.shuffled_alignment:.2f}",
        report.start_loss, report.best_loss, report.loss_ratio, report.steps,
    )
    return report


# -------------------------------------------------------------------------------- data


def draw_samples(datamodule: L.LightningDataModule, count: int) -> dict[str, Any]:
    """``count`` training samples (distinct indices when possible), collated into one batch.

    Read straight from the training dataset in this process: no worker processes to start, and
    the data module's own loaders are left for Lightning.
    """
    if count < 1:
        raise ConfigError(f"preflight.samples={count} must be >= 1")
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    dataset = loader.dataset if isinstance(loader, DataLoader) else None
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        # An iterable dataset: take the first batches as they come.
        samples: list[dict[str, Any]] = []
        for item in loader:
            samples += _unbatch(item)
            if len(samples) >= count:
                break
        return default_collate(samples[:count])
    length = len(dataset)  # type: ignore[arg-type]
    if length < 1:
        raise PreflightError("pre-flight check: the training dataset is empty")
    order = torch.randperm(length).tolist()
    indices = [order[i % length] for i in range(count)]
    collate = getattr(loader, "collate_fn", None) or default_collate
    return collate([dataset[i] for i in indices])


def _unbatch(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    size = len(batch["input"])
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def _range(values: Sequence[float] | None, default: tuple[float, float]) -> tuple[float, float]:
    low, high = values if values is not None else default
    return float(low), float(high)


def _names(batch: Mapping[str, Any], indices: Sequence[int]) -> str:
    names = batch.get("name")
    if isinstance(names, Sequence) and not isinstance(names, str):
        return ", ".join(str(names[i]) for i in indices)
    return ", ".join(f"sample {i}" for i in indices)


def check_data(batch: Mapping[str, Any], checks: Mapping[str, Any]) -> PreflightReport:
    """Ranges, finiteness, flat targets and input/target alignment of one collated batch."""
    for key in ("input", "target"):
        if key not in batch or not isinstance(batch[key], torch.Tensor):
            raise PreflightError(f"pre-flight check: training batches have no {key!r} tensor "
                                 f"(keys: {sorted(batch)}); the data module must yield "
                                 "{'input', 'target', 'amplification', 'name'}")
    x, y = batch["input"].float(), batch["target"].float()
    if x.ndim != 4 or x.shape[1] != 4 or y.ndim != 4 or y.shape[1] != 3 or \
            tuple(y.shape[-2:]) != (2 * x.shape[-2], 2 * x.shape[-1]):
        raise PreflightError(
            f"pre-flight check: input {tuple(x.shape)} and target {tuple(y.shape)} are not "
            "B x 4 x h x w packed raw and B x 3 x 2h x 2w RGB"
        )
    tol = float(checks.get("range_tolerance", 1e-4))
    problems: list[str] = []
    for key, tensor in (("input", x), ("target", y)):
        bad = ~torch.isfinite(tensor)
        if bad.any():
            rows = bad.flatten(1).any(dim=1).nonzero().flatten().tolist()
            problems.append(f"{int(bad.sum())} NaN/inf values in {key} ({_names(batch, rows)})")
    x_low, x_high = _range(checks.get("input_range"), (0.0, 300.0))
    y_low, y_high = _range(checks.get("target_range"), (0.0, 1.0))
    finite_x, finite_y = x[torch.isfinite(x)], y[torch.isfinite(y)]
    if finite_x.numel() and (finite_x.min() < x_low - tol or finite_x.max() > x_high + tol):
        problems.append(f"input values span [{finite_x.min():.4g}, {finite_x.max():.4g}], outside "
                        f"[{x_low:g}, {x_high:g}] (preflight.checks.input_range): the input "
                        "should be (raw - black) / (white - black) times the amplification")
    if finite_y.numel() and (finite_y.min() < y_low - tol or finite_y.max() > y_high + tol):
        problems.append(f"target values span [{finite_y.min():.4g}, {finite_y.max():.4g}], "
                        f"outside [{y_low:g}, {y_high:g}] (preflight.checks.target_range): the "
                        "target should be the 16-bit sRGB rendering / 65535")
    dead = (x.flatten(1).amax(dim=1) <= 0).nonzero().flatten().tolist()
    if dead:
        problems.append(f"all-zero inputs ({_names(batch, dead)})")
    amplification = batch.get("amplification")
    if isinstance(amplification, torch.Tensor):
        a_low, a_high = _range(checks.get("amplification_range"), (1.0, 300.0))
        a = amplification.float().flatten()
        outside = ((a < a_low - tol) | (a > a_high + tol) | ~torch.isfinite(a))
        if outside.any():
            rows = outside.nonzero().flatten().tolist()
            problems.append(f"amplification {[round(float(a[i]), 3) for i in rows]} outside "
                            f"[{a_low:g}, {a_high:g}] (preflight.checks.amplification_range) "
                            f"({_names(batch, rows)})")
    level = float(checks.get("flat_level", 0.01))
    max_flat = float(checks.get("max_flat_fraction", 0.99))
    black = (y <= level).flatten(1).float().mean(dim=1)
    white = (y >= 1.0 - level).flatten(1).float().mean(dim=1)
    for label, share in (("black", black), ("white", white)):
        rows = (share > max_flat).nonzero().flatten().tolist()
        if rows:
            problems.append(f"{label} targets: more than {max_flat:.0%} of pixels "
                            f"{'<=' if label == 'black' else '>='} "
                            f"{level if label == 'black' else 1 - level:g} "
                            f"({_names(batch, rows)}; preflight.checks.max_flat_fraction)")
    if problems:
        raise PreflightError(
            "pre-flight data check failed: " + "; ".join(problems) + ". Check the data set "
            "(data.root), the raw decoding (black 512 / white 16383), the amplification "
            "(data.amplification, data.m) and the target rendering. " + HOW_TO_SKIP
        )
    report = PreflightReport(samples=len(x))
    check_alignment(batch, x, y, checks, report)
    return report


def _luminance_blocks(image: torch.Tensor, size: int) -> torch.Tensor:
    """B x C x H x W -> B x size*size: channel mean, block-averaged (noise averages out)."""
    return F.adaptive_avg_pool2d(image.mean(dim=1, keepdim=True), size).flatten(1)


def correlation_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every row of ``a`` with every row of ``b`` (NaN for flat rows)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return a @ b.T


def check_alignment(batch: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor,
                    checks: Mapping[str, Any], report: PreflightReport) -> None:
    """Inputs must look like their own targets, clearly more than like other samples' targets.

    Judged on the mean over samples, not per sample: one crop of a dark, flat wall at ratio 300
    is mostly noise and must not fail a good data set, while a systematic mispairing (shuffled
    lists, pairing by listing order, crops not shared) lowers every sample.
    """
    size = int(checks.get("alignment_size", 32))
    min_corr = float(checks.get("min_alignment", 0.3))
    margin = float(checks.get("min_alignment_margin", 0.2))
    same_image = float(checks.get("same_image_correlation", 0.6))
    flat = float(checks.get("flat_std", 0.01))
    size = max(1, min(size, x.shape[-2], x.shape[-1]))
    inputs = _luminance_blocks(naive_rgb(x), size)
    targets = _luminance_blocks(y, size)
    # A target without structure (sky, wall) says nothing about alignment.
    measurable = (targets.std(dim=1) > flat) & (inputs.std(dim=1) > 0)
    corr = correlation_matrix(inputs, targets)
    diagonal = corr.diagonal()
    report.alignment = [float(v) for v in diagonal]
    rows = [i for i in range(len(x)) if measurable[i]]
    if not rows:
        log.warning("pre-flight: no training sample has structure (target block std > %g); "
                    "input/target alignment not checked", flat)
        return
    own = float(torch.stack([diagonal[i] for i in rows]).mean())
    # A shuffled pairing: input i with target j, for targets that are different pictures.
    look_alike = correlation_matrix(targets, targets)
    others = [float(corr[i, j]) for i in rows for j in rows
              if i != j and look_alike[i, j] < same_image and math.isfinite(float(corr[i, j]))]
    shuffled = sum(others) / len(others) if others else None
    report.shuffled_alignment = shuffled
    weak = not own >= min_corr
    separated = shuffled is None or own - shuffled >= margin
    if weak or not separated:
        seen = ", ".join(f"{report.alignment[i]:.2f}" for i in rows)
        detail = (f"correlation of each input with its own target: {seen} (mean {own:.2f}; "
                  f"{_names(batch, rows)})")
        if shuffled is not None:
            detail += f"; with other samples' targets (a shuffled pairing): {shuffled:.2f}"
        failing = []
        if weak:
            failing.append(f"mean below {min_corr:g} (preflight.checks.min_alignment)")
        if not separated:
            failing.append(f"own pairing not better than a shuffled one by {margin:g} "
                           "(preflight.checks.min_alignment_margin)")
        raise PreflightError(
            "pre-flight data check failed: inputs do not match their targets: " + detail + "; "
            + "; ".join(failing) + ". Check how short and long exposures are paired (by scene "
            "id, never by the order of two file listings), that input and target are cropped and "
            "flipped together, and the amplification. " + HOW_TO_SKIP
        )


# ----------------------------------------------------------------------------- overfit


def _center_crop(batch: Mapping[str, Any], count: int, crop: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    x, y = batch["input"][:count], batch["target"][:count]
    half = crop // 2
    h, w = x.shape[-2:]
    if h < half or w < half:
        raise ConfigError(f"preflight.overfit.crop_size={crop} is larger than the training "
                          f"patches ({2 * h}x{2 * w}); use at most data.patch_size")
    top, left = (h - half) // 2, (w - half) // 2
    x = x[..., top:top + half, left:left + half]
    y = y[..., 2 * top:2 * top + crop, 2 * left:2 * left + crop]
    return x.float().contiguous(), y.float().contiguous()


def _optimizer_of(model: L.LightningModule) -> torch.optim.Optimizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # configure_optimizers' warnings are shown by fit too
        configured = model.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, Mapping):
        return configured["optimizer"]
    if isinstance(configured, Sequence) and configured:
        first = configured[0]
        return first[0] if isinstance(first, Sequence) else first
    raise ConfigError(f"pre-flight: cannot find the optimizer in {type(configured).__name__}")


def _grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def overfit_one_batch(module: L.LightningModule, batch: Mapping[str, Any],
                      options: Mapping[str, Any], device: torch.device,
                      report: PreflightReport) -> None:
    """Train a copy of ``module`` on one fixed batch; fail if the loss does not fall enough."""
    steps = int(options.get("steps", 200))
    max_ratio = float(options.get("max_loss_ratio", 0.5))
    count = int(options.get("batch_size", 2))
    crop = int(options.get("crop_size", 192))
    if steps < 1 or count < 1 or not 0 < max_ratio < 1:
        raise ConfigError("preflight.overfit: steps and batch_size must be >= 1 and "
                          f"max_loss_ratio in (0, 1); got {steps}, {count}, {max_ratio}")
    criterion = getattr(module, "criterion", None)
    if criterion is None:
        raise ConfigError(f"pre-flight: {type(module).__name__} has no .criterion to overfit with")
    min_side = getattr(criterion, "min_side", 0)
    if crop <= min_side or crop % 32:
        raise ConfigError(f"preflight.overfit.crop_size={crop} must be a multiple of 32 above "
                          f"{min_side} px (MS-SSIM's 5 scales need it), e.g. 192")
    x, y = _center_crop(batch, count, crop)
    model = copy.deepcopy(module).to(device).train()
    try:
        optimizer = _optimizer_of(model)
        lr = optimizer.param_groups[0].get("lr")
        x, y = x.to(device), y.to(device)
        losses: list[float] = []
        first_grad = last_grad = math.nan
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = model.criterion(model(x), y).total
            value = float(loss.detach())
            if not math.isfinite(value):
                raise PreflightError(
                    f"pre-flight overfit: the loss became {value} at step {step} of one fixed "
                    f"batch (losses so far {_fmt(losses)}), with lr {lr:g}. Check optimizer.lr "
                    "(too high diverges) and the data ranges. " + HOW_TO_SKIP
                )
            losses.append(value)
            if value <= losses[0] * max_ratio:
                break
            loss.backward()
            last_grad = _grad_norm(model)
            if step == 0:
                first_grad = last_grad
            optimizer.step()
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.start_loss, report.final_loss = losses[0], losses[-1]
    report.best_loss, report.steps = min(losses), len(losses)
    if report.best_loss <= report.start_loss * max_ratio:
        return
    raise PreflightError(
        f"pre-flight overfit failed: training a copy of the model on one fixed batch of {count} "
        f"{crop}x{crop} crops for {len(losses)} steps took the loss from {report.start_loss:.4f} "
        f"to {report.final_loss:.4f} (best {report.best_loss:.4f}, x{report.loss_ratio:.2f}); "
        f"a working set-up gets below x{max_ratio:g} (preflight.overfit.max_loss_ratio). "
        f"Seen: lr {lr:g}, gradient norm {first_grad:.3g} at the first step and "
        f"{last_grad:.3g} at the last, inputs in [{float(x.min()):.3g}, {float(x.max()):.3g}], "
        f"targets in [{float(y.min()):.3g}, {float(y.max()):.3g}]. Check: optimizer.lr (0 or "
        "tiny learns nothing) and the scheduler, that the loss depends on the prediction, "
        "that gradients reach the network (nothing detached, outputs not all clamped at 0 or 1: "
        "the amplification), the data pairing. More steps (preflight.overfit.steps) if the "
        "learning rate is deliberately small. " + HOW_TO_SKIP
    )


def _fmt(values: Sequence[float]) -> str:
    shown = [f"{v:.4f}" for v in values[:3]]
    if len(values) > 3:
        shown += ["...", f"{values[-1]:.4f}"]
    return "[" + ", ".join(shown) + "]"

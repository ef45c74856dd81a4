"""Full-image evaluation of a checkpoint: per-image PSNR/SSIM in two conventions.

Papers on SID report the mean over images of each image's PSNR; the authors computed it on
images quantised to uint8. Both are written, since 0.1-0.3 dB differences between the
conventions are as large as many ablation effects.

Also where an evaluation's reports go and what they record: a summary must say what was scored
(checkpoint, step, data set and its amplification, device) to be trusted later, and a
re-evaluation must replace its folder's previous reports and images completely, never mixing two
checkpoints' results, and never deleting a file eval.py did not write.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from darkraw.errors import ConfigError
from darkraw.restoration import run_padded, write_image
from lightning_modules.module import naive_rgb


@dataclass
class ImageScore:
    name: str
    amplification: float
    psnr: float
    ssim: float
    psnr_uint8: float
    ssim_uint8: float
    psnr_input: float


#: Data settings that decide how bright the network's input is, by amplification mode: the ones
#: an evaluation must share with training to score the network as it was trained.
#: ``max_ratio`` clamps both amplifiers.
AMPLIFICATION_SETTINGS = {"estimated": ("amplification", "m", "max_ratio"),
                          "exposure_ratio": ("amplification", "max_ratio")}

#: The data= options of conf/data/ by the data module they build (tests/test_eval.py checks this
#: against the config files): a warning can then name the option to pass, not a class.
DATA_CONFIGS = {"datamodules.sid_datamodule.SIDDataModule": "sid",
                "datamodules.sid_datamodule.SyntheticSIDDataModule": "synthetic"}

#: What eval.py writes into its output folder; nothing else there is ever removed.
REPORT_FILES = ("per_image.csv", "summary.md", "summary.json")
IMAGES_FOLDER = "images"
#: Restorations are written here first and moved into images/ once the whole split is scored,
#: so a failed or interrupted re-evaluation leaves the previous complete one as it was.
STAGING_FOLDER = ".eval-partial"
IMAGE_SUFFIX = ".png"

STD_LABEL = ("sample standard deviation over images (n - 1 in the denominator, as "
             "sweeps.compare); null with fewer than 2 images")
METRICS = ("psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_input")


# --- settings, checked before any work --------------------------------------------------------

def check_max_images(value: object) -> int | None:
    """``null`` or a positive whole number; anything else would fail late or silently round.

    ``0`` used to end as "the split holds no images", ``1.5`` scored 2 images and ``abc`` was a
    TypeError traceback.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"max_images={value!r} is not allowed: give a positive whole number of images "
            "(e.g. max_images=10) or max_images=null for the whole split"
        )
    return value


def check_save_images(value: object) -> bool:
    """Only true or false: ``save_images=maybe`` used to count as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"save_images={value!r} is not allowed: use save_images=true or "
                          "save_images=false")
    return value


# --- the output folder ------------------------------------------------------------------------

def default_output(ckpt: str | Path, split: str) -> Path:
    """One folder per checkpoint and split, so that no two evaluations share one.

    A train.py checkpoint (``<run>/checkpoints/<name>.ckpt``) gets ``<run>/eval/<name>-<split>/``
    in its run folder; any other checkpoint ``<its folder>/eval-<name>-<split>/`` beside it.
    """
    path = Path(ckpt)
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / f"{path.stem}-{split}"
    return path.parent / f"eval-{path.stem}-{split}"


def previous_evaluation(output: Path) -> dict[str, Any] | None:
    """The summary.json of an earlier eval.py run in ``output``, or None when there is none.

    What marks a folder as eval.py's: a summary.json naming a checkpoint, a split and a mean
    PSNR (every version of eval.py wrote those).
    """
    try:
        summary = json.loads((output / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and {"ckpt", "split", "mean_psnr"} <= summary.keys():
        return summary
    return None


def _owns_images(previous: Mapping[str, Any] | None) -> bool:
    """Whether the images/ folder beside ``previous`` holds eval.py's restorations.

    A summary written with save_images=false says ``images_folder: null``: an images/ folder
    there is someone else's. Summaries from before that key existed always wrote images/.
    """
    return previous is not None and previous.get("images_folder", IMAGES_FOLDER) == IMAGES_FOLDER


def check_output(output: Path, save_images: bool) -> None:
    """Fail now, with the folder named, if the reports could not be written there later.

    Only looks: nothing is created, so a run refused later (a bad checkpoint) leaves no empty
    folder behind. Refuses a folder holding report files, or .png files in images/, that no
    earlier eval.py run wrote, since replacing them would delete someone else's files (a run
    folder's images/ holds training's validation panels). Other files in images/ stay as they are.
    """
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={output} is a file, not a folder: pass a new folder or the "
                          "folder of an earlier evaluation")
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output={output} cannot be created: {existing} is a file, not a "
                          "folder; pass another output=")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output={output} cannot be written: no write permission in "
                          f"{existing}; pass another output=")
    if existing != output:
        return
    previous = previous_evaluation(output)
    foreign = [] if previous else [name for name in REPORT_FILES if (output / name).exists()]
    images = output / IMAGES_FOLDER
    if save_images and ((images.exists() and not images.is_dir())
                        or (not _owns_images(previous) and _holds_images(images))):
        foreign.append(f"{IMAGES_FOLDER}/ with {IMAGE_SUFFIX} files")
    if foreign:
        only_images = not foreign[0].endswith(tuple(REPORT_FILES))
        raise ConfigError(
            f"output={output} already holds {', '.join(foreign)} that no earlier eval.py run "
            "wrote (no summary.json of an evaluation claims them): pass a new or empty "
            "output= folder" + (", or save_images=false" if only_images else "")
        )


def _holds_images(folder: Path) -> bool:
    """Whether restorations written into ``folder`` could be mixed up with images there."""
    return folder.is_dir() and any(p.suffix == IMAGE_SUFFIX for p in folder.iterdir())


def create_output(output: Path) -> Path:
    """The output folder and an empty staging folder inside it for the restorations."""
    staging = output / STAGING_FOLDER
    try:
        output.mkdir(parents=True, exist_ok=True)
        remove_staging(output)  # left by a killed run: only ever eval.py's restorations
        staging.mkdir()
    except OSError as error:
        raise ConfigError(f"output={output} cannot be created ({error.strerror or error}): pass "
                          "another output=") from error
    return staging


def _remove_images(folder: Path) -> None:
    """eval.py's PNGs in ``folder``, and the folder once empty; any other file stays."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and path.suffix == IMAGE_SUFFIX:
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def remove_staging(output: Path) -> None:
    _remove_images(output / STAGING_FOLDER)


def remove_previous_results(output: Path) -> None:
    """The previous evaluation's images and reports but its summary.json.

    That summary stays until write_reports overwrites it: while any file of an evaluation is in
    the folder, a summary.json claiming it is there for the next run to recognise.
    """
    previous = previous_evaluation(output)
    if previous is None:
        return
    if _owns_images(previous):
        _remove_images(output / IMAGES_FOLDER)
    for name in REPORT_FILES:
        if name != "summary.json":
            (output / name).unlink(missing_ok=True)


def publish_images(output: Path, staging: Path) -> None:
    """Move the restorations from the staging folder into images/ (after write_reports)."""
    images = output / IMAGES_FOLDER
    images.mkdir(exist_ok=True)
    for path in sorted(staging.iterdir()):
        path.replace(images / path.name)
    remove_staging(output)


# --- what the checkpoint was trained on -------------------------------------------------------

@dataclass
class CheckpointRecord:
    """What a checkpoint says about itself beyond the weights (train.py checkpoints)."""

    trained_data: dict[str, Any] = field(default_factory=dict)
    global_step: int | None = None
    epoch: int | None = None


def checkpoint_record(checkpoint: Mapping[str, Any]) -> CheckpointRecord:
    """The data module's settings and the step Lightning stored in a checkpoint, if any.

    ``checkpoint`` as :func:`darkraw.checkpoints.read_darkraw_checkpoint` returns it; an
    imported or hand-made checkpoint without these entries gives an empty record.
    """
    trained = checkpoint.get("datamodule_hyper_parameters") or {}
    step, epoch = checkpoint.get("global_step"), checkpoint.get("epoch")
    return CheckpointRecord(dict(trained) if isinstance(trained, Mapping) else {},
                            step if isinstance(step, int) else None,
                            epoch if isinstance(epoch, int) else None)


def read_checkpoint_record(ckpt: str | Path) -> CheckpointRecord:
    """:func:`checkpoint_record` of the file ``ckpt``, read as eval.py reads checkpoints."""
    from darkraw.checkpoints import read_darkraw_checkpoint

    return checkpoint_record(read_darkraw_checkpoint(ckpt))


def amplification_mismatches(trained: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> list[str]:
    """The amplification settings of ``data_cfg`` that differ from those of ``trained``."""
    keys = AMPLIFICATION_SETTINGS.get(trained.get("amplification"), ())
    return [f"data.{key}={data_cfg[key]!r} (trained with {trained[key]!r})"
            for key in keys if key in trained and key in data_cfg and trained[key] != data_cfg[key]]


def pairs_mismatch(trained: Mapping[str, Any], data_cfg: Mapping[str, Any],
                   split: str) -> str | None:
    """The warning for scoring other pairs than the training run's protocol, or None.

    ``experiment=paper`` trains (and tests after fit) on ``data.pairs=authors``, the first 0.1 s
    shot of each scene; eval.py's default ``lists`` scores every pair of SID's list files: the
    same checkpoint gives another figure on another test set.
    """
    ours, theirs = data_cfg.get("pairs"), trained.get("pairs")
    if theirs is None or ours is None or ours == theirs:
        return None
    return (f"evaluating the {split} split with data.pairs={ours} but the checkpoint was "
            f"trained with data.pairs={theirs}: the split holds other pairs than that run's "
            f"protocol (and its test_after_fit figure); pass data.pairs={theirs} to score it "
            "the same way")


def trained_data_config(trained: Mapping[str, Any]) -> str | None:
    """The data= option a checkpoint was trained with, from its stored data-module settings.

    Lightning stores the settings, not the class: SyntheticSIDDataModule is the one with a
    ``synthetic`` setting (its generator's parameters). None when nothing was stored (imported
    or hand-made checkpoints).
    """
    if "root" not in trained:
        return None
    return "synthetic" if "synthetic" in trained else "sid"


def _same_path(a: object, b: object) -> bool:
    """Whether two data roots name one folder; a relative one is taken from eval.py's folder
    (where training ran is not recorded)."""
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def training_dataset_mismatch(trained: Mapping[str, Any],
                              data_cfg: Mapping[str, Any]) -> str | None:
    """What differs between the data set of ``data_cfg`` and the one trained on, with what to
    pass to score the training data set; None when they agree or nothing was stored.

    eval.py defaults to data=synthetic: a model trained on SID would otherwise be scored on the
    synthetic set without a word.
    """
    trained_name = trained_data_config(trained)
    name = DATA_CONFIGS.get(str(data_cfg.get("_target_")))
    if trained_name is None or name is None:
        return None
    root, trained_root = data_cfg.get("root"), trained["root"]
    if trained_name != name:
        return (f"evaluating on data={name} (data.root={root}) but the checkpoint was trained "
                f"on data={trained_name} (data.root={trained_root}): pass data={trained_name} "
                f"data.root={trained_root} to score it on the data set it was trained on")
    if not _same_path(root, trained_root):
        return (f"evaluating on data.root={root} but the checkpoint was trained on "
                f"data.root={trained_root}: pass data.root={trained_root}, unless that set "
                f"has moved to {root}")
    if name == "synthetic":
        from datamodules.synthetic import override_value

        ours, theirs = dict(data_cfg.get("synthetic") or {}), dict(trained["synthetic"] or {})
        keys = [key for key in sorted(ours.keys() & theirs.keys()) if ours[key] != theirs[key]]
        if keys:
            differ = ", ".join(f"data.synthetic.{key}={ours[key]!r} (trained with "
                               f"{theirs[key]!r})" for key in keys)
            trained_values = " ".join(f"data.synthetic.{key}={override_value(theirs[key])}"
                                      for key in keys)
            return (f"evaluating with {differ}: not the synthetic set the checkpoint was "
                    f"trained on; pass {trained_values} to score that one")
    return None


# --- scoring ----------------------------------------------------------------------------------

def quantise_uint8(image: torch.Tensor) -> torch.Tensor:
    """The authors' convention: round to 8-bit levels, then score on the 0-255 scale."""
    return (image.clamp(0, 1) * 255).round()


def score_image(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, ...]:
    """PSNR and SSIM of one 1 x 3 x H x W pair, in float [0, 1] and in uint8 levels."""
    p, t = prediction.float().clamp(0, 1), target.float()
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0)
    ssim = structural_similarity_index_measure(p, t, data_range=1.0)
    p8, t8 = quantise_uint8(p), quantise_uint8(t)
    psnr8 = peak_signal_noise_ratio(p8, t8, data_range=255.0)
    ssim8 = structural_similarity_index_measure(p8, t8, data_range=255.0)
    return tuple(float(v) for v in (psnr, ssim, psnr8, ssim8))


def _batches(loader: Any, max_images: int | None) -> Iterator[Any]:
    """The loader's batches, shown as a progress bar on stderr (stdout holds the summary)."""
    from rich.console import Console
    from rich.progress import track

    total = len(loader)
    batch_size = getattr(loader, "batch_size", None) or 1
    if max_images is not None:
        total = min(total, math.ceil(max_images / batch_size))
    yield from track(loader, total=total, description="evaluating",
                     console=Console(stderr=True))


@torch.inference_mode()
def evaluate(net: nn.Module, loader: Any, device: torch.device, image_dir: Path | None,
             max_images: int | None = None) -> list[ImageScore]:
    """Score the first ``max_images`` images (all with None), counted in images, not batches."""
    scores: list[ImageScore] = []
    for batch in _batches(loader, max_images):
        if max_images is not None and len(scores) >= max_images:
            break
        x = batch["input"].to(device)
        target = batch["target"].to(device)
        prediction = run_padded(net, x).float()
        for j in range(x.shape[0]):
            if max_images is not None and len(scores) >= max_images:
                break
            name = str(batch["name"][j])
            psnr, ssim, psnr8, ssim8 = score_image(prediction[j:j + 1], target[j:j + 1])
            baseline = peak_signal_noise_ratio(naive_rgb(x[j:j + 1].float()), target[j:j + 1],
                                               data_range=1.0)
            scores.append(ImageScore(name, float(batch["amplification"][j]), psnr, ssim, psnr8,
                                     ssim8, float(baseline)))
            if image_dir is not None:
                # Names carry the exposure ("00001_00_0.1s"): keep all of it, not Path.stem.
                write_image(prediction[j], image_dir / f"{name.replace('/', '_')}{IMAGE_SUFFIX}")
    return scores


def summarise_scores(scores: list[ImageScore]) -> dict[str, float]:
    """Mean and sample std over images of each metric (non-finite values left out).

    The sample std, as sweeps.compare reports over seeds; NaN with fewer than 2 values.
    """
    summary: dict[str, float] = {"images": len(scores)}
    for key in METRICS:
        values = [getattr(s, key) for s in scores if math.isfinite(getattr(s, key))]
        summary[f"mean_{key}"] = statistics.fmean(values) if values else math.nan
        summary[f"std_{key}"] = statistics.stdev(values) if len(values) > 1 else math.nan
    return summary


def _json_value(value: Any) -> Any:
    """NaN and infinity as null: json.dumps would write NaN, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _mean_std(summary: Mapping[str, float], key: str, digits: int) -> str:
    mean, std = summary[f"mean_{key}"], summary[f"std_{key}"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _scored_lines(meta: Mapping[str, Any]) -> list[str]:
    """summary.md's record of what was scored, from the same entries as summary.json."""
    data = meta.get("data") or {}
    step = meta.get("checkpoint_step")
    lines = ["## What was scored", "",
             f"- checkpoint: `{meta.get('ckpt')}`"
             + (f", step {step}" if step is not None else ", step not recorded"),
             f"- data: data={data.get('config') or '?'} (`{data.get('_target_')}`), root "
             f"`{data.get('root')}`, pairs {data.get('pairs')}, {meta.get('split')} split"]
    amplification = ", ".join(f"{key}={data[key]}" for key in ("amplification", "m", "max_ratio")
                              if key in data)
    if amplification:
        lines.append(f"- input amplification: {amplification}")
    for key in ("full_image_eval", "patch_size", "val_max_images", "synthetic"):
        if key in data:
            value = data[key]
            shown = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"- data.{key}: {shown}")
    max_images = meta.get("max_images")
    lines.append(f"- max_images: {'all' if max_images is None else max_images}; device: "
                 f"{meta.get('device')}; precision: {meta.get('precision')}; darkraw "
                 f"{meta.get('darkraw_version')}")
    return lines


def write_reports(scores: list[ImageScore], summary: dict[str, float], output: Path,
                  meta: dict[str, Any]) -> dict[str, Path]:
    """per_image.csv, summary.json (``meta`` and the summary) and summary.md into ``output``.

    summary.json is written first: it is what marks the folder's files as eval.py's, and it
    replaces the previous one in one write.
    """
    output.mkdir(parents=True, exist_ok=True)
    summary_json = output / "summary.json"
    record = {**meta, **summary, "std": STD_LABEL}
    summary_json.write_text(json.dumps(_json_value(record), indent=2, allow_nan=False) + "\n")
    per_image = output / "per_image.csv"
    with per_image.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(scores[0]).keys()))
        writer.writeheader()
        writer.writerows(asdict(s) for s in scores)
    summary_md = output / "summary.md"
    lines = [f"# Evaluation of `{meta.get('ckpt')}` on the {meta.get('split')} split", "",
             "| metric | float [0,1] | uint8 (authors) |", "|---|---|---|",
             f"| PSNR (dB) | {_mean_std(summary, 'psnr', 3)} | "
             f"{_mean_std(summary, 'psnr_uint8', 3)} |",
             f"| SSIM | {_mean_std(summary, 'ssim', 4)} | {_mean_std(summary, 'ssim_uint8', 4)} |",
             "",
             f"Images: {int(summary['images'])}. Amplified-input baseline: "
             f"{_mean_std(summary, 'psnr_input', 3)} dB. Mean ± sample standard deviation over "
             "images of each image's value (no ± with a single image).", "",
             *_scored_lines(meta)]
    summary_md.write_text("\n".join(lines) + "\n")
    return {"per_image": per_image, "summary_json": summary_json, "summary_md": summary_md}


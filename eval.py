"""Evaluate a checkpoint on full validation (default) or test images.

    python eval.py ckpt=outputs/paper/runs/default/checkpoints/last.ckpt \
        data=sid data.root=/data/SID [split=test]

Writes per_image.csv, summary.json and summary.md (PSNR/SSIM in float and in the authors' uint8
convention, and what was scored) and the restored images into one folder per checkpoint and
split: ``<run folder>/eval/<checkpoint name>-<split>/`` by default. Paths need no quotes, even
with ``=`` or ``,`` in them (as run folders have). ``python eval.py --help`` lists the settings.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import darkraw.resolvers  # noqa: F401  (registers the config resolvers)
from darkraw.cli import (
    exit_on_composition_error,
    exit_with_user_error,
    override_key,
    quote_path_arguments_in_sys_argv,
    require_set,
    run_reporting_user_errors,
)
from darkraw.errors import ConfigError
from darkraw.instantiate import instantiate_checked

SPLITS = {"val": ("validate", "val_dataloader"), "test": ("test", "test_dataloader")}
# Keys whose values are paths: quoted for Hydra before it parses the command line.
PATH_KEYS = ("ckpt", "output", "data.root", "data.cache_dir", "paths.root_dir", "paths.data_dir",
             "paths.cache_dir", "paths.log_dir")
REQUIRED = {"ckpt": "ckpt=outputs/<experiment>/runs/<run>/checkpoints/best-....ckpt (or last.ckpt)"}
CONF = Path(__file__).resolve().parent / "conf"
# The config groups conf/eval.yaml composes; every other group of conf/ is train.py's.
EVAL_GROUPS = ("data", "paths", "hydra")
# Data settings that decide what is scored, recorded in summary.json beside the amplification.
RECORDED_DATA = ("_target_", "root", "pairs", "amplification", "m", "max_ratio",
                 "full_image_eval")

log = logging.getLogger(__name__)


def train_only_groups(conf: Path = CONF) -> list[str]:
    """conf/'s groups that eval.py does not compose (experiment, model, trainer, ...)."""
    return sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name not in EVAL_GROUPS)


def check_no_train_only_overrides(argv: Sequence[str], conf: Path = CONF) -> None:
    """Refuse ``experiment=paper``, ``trainer.max_steps=4`` and the like before Hydra does.

    Hydra would answer "use +experiment=paper", which merges a training experiment into the
    evaluation config: the network and its settings come from the checkpoint instead.
    """
    groups = set(train_only_groups(conf))
    for arg in argv:
        if arg.startswith("-"):
            continue
        key = override_key(arg)
        group = key.replace("/", ".").split(".")[0]
        if group in groups:
            raise ConfigError(
                f"{arg} is a train.py setting (conf/{group}/): eval.py rebuilds the network from "
                "ckpt= and takes ckpt, split, output, save_images, max_images, device, data= and "
                "data.*/paths.* settings (python eval.py --help)"
            )


def darkraw_version() -> str:
    try:
        return version("darkraw")
    except PackageNotFoundError:
        return "unknown"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def scored_data(data: dict[str, Any], split: str) -> dict[str, Any]:
    """The data settings summary.json records: what decides which images are scored and how."""
    from darkraw.evaluation import DATA_CONFIGS

    record: dict[str, Any] = {"config": DATA_CONFIGS.get(str(data.get("_target_")))}
    record.update({key: data[key] for key in RECORDED_DATA if key in data})
    if record.get("root") is not None:  # relative roots depend on where eval.py ran
        record["root"] = str(Path(record["root"]).expanduser().absolute())
    if data.get("full_image_eval") is False:
        record["patch_size"] = data.get("patch_size")  # center crops of this side
    if split == "val" and data.get("val_max_images") is not None:
        record["val_max_images"] = data["val_max_images"]
    if "synthetic" in data:
        record["synthetic"] = data["synthetic"]
    return record


def run(cfg: DictConfig) -> dict[str, float]:
    from darkraw.checkpoints import load_inference_network, pick_device, read_darkraw_checkpoint
    from darkraw.evaluation import (
        IMAGES_FOLDER,
        amplification_mismatches,
        check_max_images,
        check_output,
        check_save_images,
        checkpoint_record,
        create_output,
        default_output,
        evaluate,
        pairs_mismatch,
        publish_images,
        remove_previous_results,
        remove_staging,
        summarise_scores,
        training_dataset_mismatch,
        write_reports,
    )
    from darkraw.training import check_local_config

    # Every setting and the output folder are checked before the checkpoint or any data is read.
    require_set(cfg, REQUIRED)
    check_local_config(cfg)
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is not allowed: choose one of {list(SPLITS)}")
    stage, loader_name = SPLITS[cfg.split]
    max_images = check_max_images(cfg.max_images)
    save_images = check_save_images(cfg.save_images)
    output = Path(cfg.output) if cfg.output else default_output(cfg.ckpt, cfg.split)
    check_output(output, save_images)
    device = pick_device(cfg.device)
    checkpoint = read_darkraw_checkpoint(cfg.ckpt)  # read once: the network and its record
    # Folded weight norm, channels-last: 1.6x faster on a CPU (BENCHMARKS.md).
    net = load_inference_network(cfg.ckpt, device, checkpoint)
    record = checkpoint_record(checkpoint)
    del checkpoint
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    mismatches = amplification_mismatches(record.trained_data, data)
    if mismatches:
        log.warning("darkraw: warning: evaluating with %s: the inputs are amplified otherwise "
                    "than in training; pass the trained values to score the model as trained",
                    ", ".join(mismatches))
    dataset_mismatch = training_dataset_mismatch(record.trained_data, data)
    if dataset_mismatch:
        log.warning("darkraw: warning: %s", dataset_mismatch)
    other_pairs = pairs_mismatch(record.trained_data, data, cfg.split)
    if other_pairs:
        log.warning("darkraw: warning: %s", other_pairs)

    created = [folder for folder in (output, *output.parents) if not folder.exists()]
    staging = create_output(output)
    try:
        datamodule = instantiate_checked(cfg.data, _convert_="all")
        if hasattr(datamodule, "replace_other_set"):
            # A synthetic set made with other settings (most often the one trained on) is named
            # and kept: scoring must never replace the data a model was trained on.
            datamodule.replace_other_set = False
        if hasattr(datamodule, "only_splits"):
            # Cache and open the scored split only: a first evaluation on SID decodes its
            # images, not the whole training set it would never read.
            datamodule.only_splits = (cfg.split,)
        datamodule.prepare_data()
        datamodule.setup(stage)
        loader = getattr(datamodule, loader_name)()
        scores = evaluate(net, loader, device, staging if save_images else None, max_images)
        if not scores:
            raise ConfigError(f"the {cfg.split} split holds no images: check the data config "
                              f"(data.root={data.get('root')})")
        summary = summarise_scores(scores)
        remove_previous_results(output)
        meta = {"ckpt": str(Path(cfg.ckpt).absolute()), "split": cfg.split,
                "checkpoint_step": record.global_step, "checkpoint_epoch": record.epoch,
                "data": scored_data(data, cfg.split), "max_images": max_images,
                "save_images": save_images,
                "images_folder": IMAGES_FOLDER if save_images else None,
                "device": describe_device(device), "precision": "32",
                "darkraw_version": darkraw_version()}
        files = write_reports(scores, summary, output, meta)
        if save_images:
            publish_images(output, staging)
        remove_staging(output)
    except BaseException:
        remove_staging(output)  # failed while scoring: the previous evaluation is untouched
        for folder in created:  # a failed first evaluation leaves no empty folders behind
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise
    print(files["summary_md"].read_text(), end="")
    written = [files[key].name for key in ("per_image", "summary_json", "summary_md")]
    if save_images:
        written.append(f"{IMAGES_FOLDER}/ ({len(scores)} restored image"
                       f"{'' if len(scores) == 1 else 's'})")
    print(f"darkraw: wrote {', '.join(written)} into {output}", file=sys.stderr)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(run, cfg)


if __name__ == "__main__":
    try:
        check_no_train_only_overrides(sys.argv[1:])
    except ConfigError as error:
        exit_with_user_error(error)
    quote_path_arguments_in_sys_argv(PATH_KEYS)
    exit_on_composition_error("eval", sys.argv[1:])
    main()

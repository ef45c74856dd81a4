"""Evaluate a checkpoint on full validation or test images.

    python eval.py ckpt=outputs/paper/runs/default/checkpoints/last.ckpt \
        data=sid data.root=/data/SID

Writes per_image.csv, summary.json and summary.md (PSNR/SSIM in float and in the authors' uint8
convention) and the restored images. Paths need no quotes, even with ``=`` or ``,`` in them (as
run folders have).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import darkraw.resolvers  # noqa: F401  (registers the config resolvers)
from darkraw.cli import quote_path_arguments_in_sys_argv, require_set, run_reporting_user_errors
from darkraw.errors import ConfigError
from darkraw.instantiate import instantiate_checked

SPLITS = {"val": ("validate", "val_dataloader"), "test": ("test", "test_dataloader")}
# Keys whose values are paths: quoted for Hydra before it parses the command line.
PATH_KEYS = ("ckpt", "output", "data.root", "data.cache_dir", "paths.root_dir", "paths.data_dir",
             "paths.cache_dir", "paths.log_dir")
REQUIRED = {"ckpt": "ckpt=outputs/<experiment>/runs/<run>/checkpoints/best-....ckpt (or last.ckpt)"}

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    from darkraw.checkpoints import load_network, pick_device
    from darkraw.evaluation import (
        evaluate,
        summarise_scores,
        training_data_mismatches,
        write_reports,
    )

    require_set(cfg, REQUIRED)
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is not allowed: choose one of {list(SPLITS)}")
    stage, loader_name = SPLITS[cfg.split]
    device = pick_device(cfg.device)
    net = load_network(cfg.ckpt, device)
    mismatches = training_data_mismatches(cfg.ckpt, cfg.data)
    if mismatches:
        log.warning("darkraw: warning: evaluating with %s: the inputs are amplified otherwise "
                    "than in training; pass the trained values to score the model as trained",
                    ", ".join(mismatches))
    output = Path(cfg.output) if cfg.output else Path(cfg.ckpt).parent.parent / f"eval-{cfg.split}"
    datamodule = instantiate_checked(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup(stage)
    loader = getattr(datamodule, loader_name)()
    scores = evaluate(net, loader, device, output / "images" if cfg.save_images else None,
                      cfg.max_images)
    if not scores:
        raise ConfigError(f"the {cfg.split} split holds no images: check the data config")
    summary = summarise_scores(scores)
    files = write_reports(scores, summary, output, {"ckpt": str(cfg.ckpt), "split": cfg.split})
    print(files["summary_md"].read_text())
    print(f"darkraw: per-image metrics in {files['per_image']}", file=sys.stderr)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(run, cfg)


if __name__ == "__main__":
    quote_path_arguments_in_sys_argv(PATH_KEYS)
    main()

"""Restore dark raw files with a trained network: any raw rawpy reads, any size.

    python restore.py ckpt=outputs/paper/runs/default/checkpoints/last.ckpt \
        input=photos/ output=restored/ 'm=[1,5,8]'
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from darkraw.cli import run_reporting_user_errors
from darkraw.errors import ConfigError

AUTOCAST = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(cfg: DictConfig) -> list[tuple[Path, float]]:
    from darkraw.checkpoints import load_network, pick_device
    from darkraw.restoration import find_raw_files, restore_all

    precision = str(cfg.precision)
    if precision not in AUTOCAST:
        raise ConfigError(f"precision={precision!r} is not allowed: choose one of {list(AUTOCAST)}")
    m_values = cfg.m if OmegaConf.is_list(cfg.m) else [cfg.m]
    device = pick_device(cfg.device)
    files = find_raw_files(cfg.input)
    net = load_network(cfg.ckpt, device)
    output = Path(cfg.output)
    results = restore_all(
        net, files, output, m_values=[float(m) for m in m_values],
        amplification=cfg.amplification, image_format=str(cfg.format).lstrip("."),
        tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap, device=device,
        autocast_dtype=AUTOCAST[precision],
    )
    for path, gain in results:
        print(f"{path}  (amplification x{gain:.1f})")
    print(f"darkraw: restored {len(files)} file(s) into {output}", file=sys.stderr)
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="restore")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(run, cfg)


if __name__ == "__main__":
    main()

"""Loading a trained network for use (evaluation, restoration) from a Lightning checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from darkraw.errors import ConfigError, DataError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available: use device=cpu")
    return device


def load_network(ckpt: str | Path, device: torch.device) -> nn.Module:
    """The network of a darkraw checkpoint, in eval mode, rebuilt from the checkpoint alone."""
    from lightning_modules.module import RestorationModule

    path = Path(ckpt)
    if not path.is_file():
        raise DataError(
            f"ckpt={path} does not exist: give a checkpoint written by train.py (e.g. "
            "outputs/<experiment>/runs/<run>/checkpoints/last.ckpt) or one made by "
            "`python -m lightning_modules.reference_import`"
        )
    try:
        module = RestorationModule.load_from_checkpoint(path, map_location="cpu")
    except (KeyError, RuntimeError, TypeError) as error:
        raise DataError(
            f"ckpt={path} is not a darkraw checkpoint ({type(error).__name__}: {error}). The "
            "authors' published file must first be converted with "
            "`python -m lightning_modules.reference_import`."
        ) from error
    return module.net.to(device).eval()

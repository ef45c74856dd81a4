"""Loading a trained network for use (evaluation, restoration, export) from a Lightning checkpoint.

Users hand these entry points every kind of file: the authors' ``.pt``, a checkpoint of another
project, a half-copied download, a raw file by mistake. Each gets a message saying what the file
is and what to give instead, never torch's unpickling traceback (whose advice to pass
``weights_only=False`` would run whatever code the file holds).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkraw.errors import ConfigError, DataError

#: How to get a checkpoint that these loaders accept; ends every "not a checkpoint" message.
HOW_TO_GET_A_CHECKPOINT = (
    "give a checkpoint written by train.py (e.g. outputs/<experiment>/runs/<run>/checkpoints/"
    "last.ckpt) or one made by `python -m lightning_modules.reference_import`"
)
#: What torch raises, depending on the file, when it is not a torch.save file (or is cut short):
#: a text file gives KeyError, a truncated zip RuntimeError, a foreign pickle UnpicklingError.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError,
                          IndexError, AttributeError, ImportError, zipfile.BadZipFile, OSError)


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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def load_torch_file(path: str | Path, key: str, what_to_give: str) -> Any:
    """``torch.load`` of tensors and plain values only, with errors naming ``key=path``.

    ``weights_only=True`` never executes code from the file; darkraw's own checkpoints and the
    authors' file load that way, so a file that needs more is not one of them.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{key}={path} is a folder, not a file: {what_to_give}")
    if not path.is_file():
        raise DataError(f"{key}={path} does not exist: {what_to_give}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch words every refusal "Weights only load failed ... weights_only=False will likely
        # succeed": only an "Unsupported global" is a real pickle of objects; the rest is
        # a file that is no pickle at all (a text file, an image, a damaged download).
        objects = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if objects:
            raise DataError(
                f"{key}={path} holds pickled Python objects ({objects.group(1)}) besides tensors, "
                "which darkraw does not load (they could run code): it is not a darkraw "
                f"checkpoint; {what_to_give}"
            ) from error
        raise DataError(
            f"{key}={path} is not a PyTorch checkpoint file (neither a torch.save archive nor "
            f"a pickle of tensors; or it is damaged): {what_to_give}"
        ) from error
    except UNREADABLE_FILE_ERRORS as error:
        raise DataError(
            f"{key}={path} could not be read as a PyTorch checkpoint ({type(error).__name__}: "
            f"{first_line(error)}); if it is one, it is incomplete (compare its size with the "
            f"original); otherwise {what_to_give}"
        ) from error


def is_darkraw_checkpoint(payload: Mapping[str, Any]) -> bool:
    """A Lightning checkpoint of :class:`RestorationModule`: hyper-parameters and ``net.*`` keys."""
    state = payload.get("state_dict")
    return (isinstance(state, Mapping) and isinstance(payload.get("hyper_parameters"), Mapping)
            and any(isinstance(k, str) and k.startswith("net.") for k in state))


def read_darkraw_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, after checking that it is darkraw's, saying what it is otherwise."""
    path = Path(path)
    payload = load_torch_file(path, "ckpt", HOW_TO_GET_A_CHECKPOINT)
    if not isinstance(payload, Mapping):
        raise DataError(
            f"ckpt={path} holds a {type(payload).__name__}, not a checkpoint dict: "
            f"{HOW_TO_GET_A_CHECKPOINT}"
        )
    if is_darkraw_checkpoint(payload):
        return dict(payload)
    if "model" in payload and "state_dict" not in payload:
        raise DataError(
            f"ckpt={path} looks like the authors' published checkpoint ({{'model': ...}}): "
            f"convert it once with `python -m lightning_modules.reference_import {path} "
            "<out.ckpt>` and pass the .ckpt it writes"
        )
    if "state_dict" in payload:
        raise DataError(
            f"ckpt={path} is a Lightning checkpoint, but not of darkraw's RestorationModule (no "
            f"hyper_parameters or no net.* weights): {HOW_TO_GET_A_CHECKPOINT}"
        )
    keys = sorted(map(str, payload))[:8]
    raise DataError(f"ckpt={path} is not a darkraw checkpoint (its keys: {keys}): "
                    f"{HOW_TO_GET_A_CHECKPOINT}")


def network_from_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> nn.Module:
    """The training-form network of a checkpoint already read by :func:`read_darkraw_checkpoint`.

    Rebuilt from the checkpoint's own hyper-parameters (validated as at training time, so they
    name the ``rdb`` variant) and its weights, strictly: the file is read once, not once per use.
    """
    from lightning_modules.module import RestorationModule

    try:
        module = RestorationModule(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError, ConfigError) as error:
        raise DataError(
            f"ckpt={path} is a darkraw checkpoint that does not fit this version's network "
            f"({type(error).__name__}: {first_line(error)}); was it written by another darkraw "
            "version or edited?"
        ) from error
    return module.net.eval()


def load_network(ckpt: str | Path, device: torch.device,
                 checkpoint: Mapping[str, Any] | None = None) -> nn.Module:
    """The training-form network of a darkraw checkpoint, in eval mode, rebuilt from it alone.

    ``checkpoint``: the file's contents when the caller has read them already (eval.py also needs
    its step and data settings), so the file is not read a second time.
    """
    if checkpoint is None:
        checkpoint = read_darkraw_checkpoint(ckpt)
    return network_from_checkpoint(checkpoint, ckpt).to(device)


def load_inference_network(ckpt: str | Path, device: torch.device,
                           checkpoint: Mapping[str, Any] | None = None,
                           **options: object) -> nn.Module:
    """The checkpoint's network in its fast inference form, for eval.py and restore.py.

    Weight norm folded, the cat-free output stage, channels-last, CUDA-stream encoders on a
    GPU: 1.6x faster than the training form on a CPU (BENCHMARKS.md), with the same outputs
    to float32 rounding. ``options`` are those of ``prepare_for_inference`` (e.g. ``compile``).
    """
    from lightning_modules.inference import prepare_for_inference

    net = load_network(ckpt, torch.device("cpu"), checkpoint)
    return prepare_for_inference(net, device=device, **options)  # type: ignore[arg-type]

"""Loading a trained network for use (evaluation, restoration, export) from a Lightning checkpoint.

Users hand these entry points every kind of file: the authors' ``.pt``, a checkpoint of another
project, a half-copied download, a raw file by mistake. Each gets a message saying what the file
is and what to give instead, never torch's unpickling traceback (whose advice to pass
``weights_only=False`` would run whatever code the file holds).
"""

from __future__ import annotations

import json
import pickle
import re
import shlex
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkraw.checkpoint_io import nonfinite_tensors
from darkraw.errors import ConfigError, DataError, first_few

#: How to get a checkpoint that these loaders accept; ends every "not a checkpoint" message.
HOW_TO_GET_A_CHECKPOINT = (
    "give a checkpoint written by train.py (e.g. outputs/<experiment>/runs/<run>/checkpoints/"
    "last.ckpt) or one made by `python -m lightning_modules.reference_import`"
)
#: Keys named in a "does not fit" message, per kind (missing, unexpected, other shape).
MAX_KEYS_LISTED = 3
#: Key prefixes under which a network's own state dict is found: darkraw's RestorationModule
#: (``net.``) and nn.DataParallel / DistributedDataParallel (``module.``).
STATE_DICT_PREFIXES = ("module.", "net.")
#: What torch raises, depending on the file, when it is not a torch.save file (or is cut short):
#: a text file gives KeyError, a truncated zip RuntimeError, a foreign pickle UnpicklingError.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError,
                          IndexError, AttributeError, ImportError, zipfile.BadZipFile, OSError)


def available_devices() -> list[str]:
    """The ``device=`` values this machine can run on, for the message refusing another one."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += ["cuda", *(f"cuda:{i}" for i in range(count))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def pick_device(name: object) -> torch.device:
    """``device=`` as a torch device this machine has: ``auto`` is the first CUDA GPU or the CPU.

    torch accepts any device it knows by name (``mps``, ``cuda:7``, ``xpu``, ``meta``) and fails
    only at the first tensor moved there, with its own traceback; here each is checked, and
    refused in one line saying what this machine has.
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = [f"device={choice}" for choice in available_devices()]
    available = f"use {', '.join(choices[:-1])} or {choices[-1]} (what this machine has)"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={name!r} is not a device: {available}") from error
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but no CUDA GPU is available: {available}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name!r} but this machine has {count} CUDA GPU(s), "
                              f"numbered from 0: {available}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={name!r} but Apple's MPS GPU is not available here (only on "
                              f"a Mac, with a PyTorch built for it): {available}")
        return device
    raise ConfigError(f"device={name!r} is not supported (darkraw runs on the CPU, CUDA GPUs and "
                      f"Apple's MPS): {available}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


#: Leading bytes of files users pass by mistake: what each is, and what to do when that is more
#: specific than "give a checkpoint" (checked in this order).
FILE_SIGNATURES: tuple[tuple[bytes, str, str | None], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer (a small text file standing in for the real "
     "file)", "fetch the file itself with `git lfs pull`, or download it again"),
    (b"\x89PNG", "a PNG image", None),
    (b"\xff\xd8\xff", "a JPEG image", None),
    (b"II*\x00", "a TIFF file (a DNG or TIFF-based camera raw?)", None),
    (b"MM\x00*", "a TIFF file (a DNG or TIFF-based camera raw?)", None),
    (b"\x93NUMPY", "a NumPy array file (.npy)", None),
)
#: How much of a file the guess reads: enough for an HTML page's doctype and a text's first line.
SNIFFED_BYTES = 512


def what_the_file_is(path: Path) -> tuple[str, str | None] | None:
    """What a file that ``torch.load`` refused looks like from its first bytes, and what to do
    about it where that is specific; None for a binary file of no known kind.

    A checkpoint "downloaded" from a file host is often the host's HTML page (a sign-in or
    virus-scan notice), and one from a Git repository a Git LFS pointer: both are small text
    files, and torch's ``KeyError: 118`` says neither.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFFED_BYTES)
    except OSError:
        return None
    if not head:
        return "an empty file (0 bytes)", "copy or download it again"
    for signature, kind, advice in FILE_SIGNATURES:
        if head.startswith(signature):
            return kind, advice
    if b"\x00" in head:
        return None  # binary: a damaged or foreign file, for the caller's generic message
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if re.match(r"<(!doctype\s+html|html|head|body)\b", text, re.IGNORECASE):
        return ("an HTML web page (a download link that returned the site's page, e.g. a "
                "sign-in or virus-scan notice)",
                "download the file again from its page in a browser")
    if not text:
        return "a text file of blank lines", None
    return f"a text file (it starts with {text.splitlines()[0][:60]!r})", None


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
    except UNREADABLE_FILE_ERRORS as error:
        seen = what_the_file_is(path)
        if seen is not None:
            kind, advice = seen
            raise DataError(f"{key}={path} is {kind}, not a PyTorch checkpoint: "
                            f"{advice or what_to_give}") from error
        unreadable = error
    if isinstance(unreadable, pickle.UnpicklingError):
        # torch words every refusal "Weights only load failed ... weights_only=False will likely
        # succeed": only an "Unsupported global" is a real pickle of objects; the rest is
        # a file that is no pickle at all (a binary file of another kind, a damaged download).
        objects = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(unreadable))
        if objects:
            raise DataError(
                f"{key}={path} holds pickled Python objects ({objects.group(1)}) besides tensors, "
                "which darkraw does not load (they could run code): it is not a darkraw "
                f"checkpoint; {what_to_give}"
            ) from unreadable
        raise DataError(
            f"{key}={path} is not a PyTorch checkpoint file (neither a torch.save archive nor "
            f"a pickle of tensors; or it is damaged): {what_to_give}"
        ) from unreadable
    raise DataError(
        f"{key}={path} could not be read as a PyTorch checkpoint ({type(unreadable).__name__}: "
        f"{first_line(unreadable)}); if it is one, it is incomplete (compare its size with the "
        f"original); otherwise {what_to_give}"
    ) from unreadable


def is_darkraw_checkpoint(payload: Mapping[str, Any]) -> bool:
    """A Lightning checkpoint of :class:`RestorationModule`: hyper-parameters and ``net.*`` keys."""
    state = payload.get("state_dict")
    return (isinstance(state, Mapping) and isinstance(payload.get("hyper_parameters"), Mapping)
            and any(isinstance(k, str) and k.startswith("net.") for k in state))


def describe_shape(value: object) -> str:
    """A tensor's shape as ``4x32x3x3``, or the type of what stands where a tensor should."""
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else (
        type(value).__name__)


def _network_state_dict() -> dict[str, torch.Tensor]:
    from lightning_modules.network import DarkRestorationNet

    return DarkRestorationNet().state_dict()


def strip_key_prefixes(state: Mapping[Any, Any],
                       prefixes: tuple[str, ...] = STATE_DICT_PREFIXES) -> dict[Any, Any]:
    """``state`` with each of ``prefixes`` removed where every key carries it (in that order, so
    a DataParallel-wrapped RestorationModule's ``module.net.`` goes too): the same tensors under
    the names the bare network expects."""
    state = dict(state)
    for prefix in prefixes:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def is_network_state_dict(state: object) -> bool:
    """Whether ``state`` holds exactly the tensors of darkraw's DarkRestorationNet: the names
    and shapes of ``net.state_dict()`` (with a ``net.`` or ``module.`` prefix or without).

    That is what ``torch.save(net.state_dict(), ...)`` writes: the weights alone, without the
    hyper-parameters a checkpoint carries. Both ``rdb`` variants have the same tensors, so the
    variant cannot be told from them.
    """
    if not isinstance(state, Mapping) or not state:
        return False
    state = strip_key_prefixes(state)
    expected = _network_state_dict()
    return state.keys() == expected.keys() and all(
        isinstance(state[k], torch.Tensor) and state[k].shape == v.shape
        for k, v in expected.items())


def wrap_state_dict_hint(path: Path, state_key: str | None, prefixed: bool) -> str:
    """How to make a checkpoint of a bare state dict: a one-line command using the importer's
    own helpers, which write the weights with the hyper-parameters that rebuild the network."""
    out = path.with_name(f"{path.stem}-darkraw.ckpt")
    load = f"torch.load({json.dumps(str(path))}, weights_only=True)"
    if state_key is not None:
        load += f"[{json.dumps(state_key)}]"
    imports = ["import torch", "from lightning_modules.network import DarkRestorationNet",
               "from lightning_modules.reference_import import lightning_checkpoint, "
               "save_checkpoint"]
    if prefixed:
        imports.insert(1, "from darkraw.checkpoints import strip_key_prefixes")
        load = f"strip_key_prefixes({load})"
    code = "; ".join([
        *imports, 'net = DarkRestorationNet(rdb="before")', f"net.load_state_dict({load})",
        f"save_checkpoint(lightning_checkpoint(net), {json.dumps(str(out))})",
    ])
    return (f"make a checkpoint of it once with `python -c {shlex.quote(code)}` (rdb=\"after\" "
            "if it was trained with model.rdb=after: the weights do not tell) and pass "
            f"ckpt={out}")


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
    for state_key in (None, "state_dict"):
        state = payload if state_key is None else payload.get(state_key)
        if is_network_state_dict(state):
            assert isinstance(state, Mapping)
            where = "" if state_key is None else f" (under {state_key!r})"
            prefixed = strip_key_prefixes(state).keys() != state.keys()
            raise DataError(
                f"ckpt={path} holds only the weights of darkraw's network{where}, a bare "
                "state_dict without the hyper-parameters that rebuild it: "
                f"{wrap_state_dict_hint(path, state_key, prefixed)}"
            )
    if "state_dict" in payload:
        raise DataError(
            f"ckpt={path} is a Lightning checkpoint, but not of darkraw's RestorationModule (no "
            f"hyper_parameters or no net.* weights): {HOW_TO_GET_A_CHECKPOINT}"
        )
    keys = sorted(map(str, payload))[:8]
    raise DataError(f"ckpt={path} is not a darkraw checkpoint (its keys: {keys}): "
                    f"{HOW_TO_GET_A_CHECKPOINT}")


def _listed(keys: list[str], limit: int = MAX_KEYS_LISTED) -> str:
    return first_few(keys, limit, more=" and {} more")


def state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[Any, Any]) -> str | None:
    """What keeps ``given`` from loading into a module whose state dict is ``expected``, in a few
    words naming the first keys of each kind; None when it fits.

    ``load_state_dict``'s own error puts its detail on the lines after the first, which one
    line of message would drop; it says "Error(s) in loading state_dict" and nothing more.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [str(k) for k in given if k not in expected]
    wrong = [f"{k} ({describe_shape(given[k])} in the file, {describe_shape(v)} expected)"
             for k, v in expected.items()
             if k in given and (not isinstance(given[k], torch.Tensor)
                                or given[k].shape != v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} of another shape: {_listed(wrong)}")
    return f"weights {'; '.join(parts)}" if parts else None


def network_from_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> nn.Module:
    """The training-form network of a checkpoint already read by :func:`read_darkraw_checkpoint`.

    Rebuilt from the checkpoint's own hyper-parameters (validated as at training time, so they
    name the ``rdb`` variant) and its weights, strictly: the file is read once, not once per use.
    """
    from lightning_modules.module import RestorationModule

    def does_not_fit(detail: str) -> DataError:
        return DataError(
            f"ckpt={path} is a darkraw checkpoint that does not fit this version's network "
            f"({detail}); was it written by another darkraw version or edited?"
        )

    try:
        module = RestorationModule(**checkpoint["hyper_parameters"])
    except (KeyError, RuntimeError, TypeError, ValueError, ConfigError) as error:
        raise does_not_fit(f"{type(error).__name__}: {first_line(error)}") from error
    mismatch = state_dict_mismatch(module.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise does_not_fit(mismatch)
    nonfinite = nonfinite_tensors(checkpoint["state_dict"])
    if nonfinite:
        # Such a network writes all-black images (NaN rounds to 0) and scores n/a, exit 0.
        # darkraw's training never saves one (AtomicCheckpointIO), so it was edited, imported
        # or written by other code.
        raise DataError(
            f"ckpt={path} holds NaN or inf in {len(nonfinite)} weight tensor(s) "
            f"({_listed(nonfinite)}): its network cannot restore anything (its images would be "
            "black); use a checkpoint from before the training diverged, e.g. the run's "
            "best-*.ckpt"
        )
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        detail = " ".join(str(error).split())  # its detail is on the lines after the first
        raise does_not_fit(f"{type(error).__name__}: {detail}") from error
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

"""Import the authors' published checkpoint into darkraw's network, and export back to it.

The authors' file is a ``torch.save``\\ d ``{"model": state_dict}`` of 63 tensors (``--list-keys``
prints them) with old-style weight norm: ``weight_g`` and
``weight_v`` per conv. darkraw names its modules after what they do and uses the parametrization
form of weight norm, so every name is mapped explicitly below; both weight-norm forms compute
``g * v / ||v||`` with the norm over all but dim 0, so the tensors carry over unchanged.

The reference network is the paper's RDB* (``rdb="before"``): in its dense layers the conv sits at
index 0 of layer 0 (no activation) and at index 1 of the other layers (after their LeakyReLU).

Users bring that file themselves; darkraw never ships it (non-commercial licence). Convert once:

    python -m lightning_modules.reference_import <reference.pt> <out.ckpt>

and use ``out.ckpt`` wherever a darkraw checkpoint is expected (``eval.py ckpt=...``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from darkraw.checkpoint_io import nonfinite_tensors
from darkraw.checkpoints import describe_shape
from darkraw.disk import replaced_when_complete
from darkraw.errors import DataError
from lightning_modules.network import DarkRestorationNet

REFERENCE_RDB = "before"
REFERENCE_TENSOR_COUNT = 63

# Reference conv (the module holding weight_g/weight_v/bias) -> darkraw conv. Order = the order
# of the reference state dict, so an export reproduces the authors' file layout exactly.
CONV_MAP: tuple[tuple[str, str], ...] = (
    ("conv32x.0.0", "high.squeeze_grouped"),  # 3x3, 1024->128, 128 groups
    ("conv32x.1.0", "high.squeeze"),  # 3x3, 128->64
    ("RDB1.dense_layers.0.conv.0", "high.rdb1.layers.0.conv"),  # first: no activation
    ("RDB1.dense_layers.1.conv.1", "high.rdb1.layers.1.conv"),  # index 0 is the LeakyReLU
    ("RDB1.dense_layers.2.conv.1", "high.rdb1.layers.2.conv"),
    ("RDB1.dense_layers.3.conv.1", "high.rdb1.layers.3.conv"),  # last: LeakyReLU(1)
    ("RDB1.conv_1x1.0", "high.rdb1.local_fusion"),
    ("RDB2.dense_layers.0.conv.0", "high.rdb2.layers.0.conv"),
    ("RDB2.dense_layers.1.conv.1", "high.rdb2.layers.1.conv"),
    ("RDB2.dense_layers.2.conv.1", "high.rdb2.layers.2.conv"),
    ("RDB2.dense_layers.3.conv.1", "high.rdb2.layers.3.conv"),
    ("RDB2.dense_layers.4.conv.1", "high.rdb2.layers.4.conv"),
    ("RDB2.conv_1x1.0", "high.rdb2.local_fusion"),
    ("RDB3.dense_layers.0.conv.0", "high.rdb3.layers.0.conv"),
    ("RDB3.dense_layers.1.conv.1", "high.rdb3.layers.1.conv"),
    ("RDB3.dense_layers.2.conv.1", "high.rdb3.layers.2.conv"),
    ("RDB3.dense_layers.3.conv.1", "high.rdb3.layers.3.conv"),
    ("RDB3.dense_layers.4.conv.1", "high.rdb3.layers.4.conv"),
    ("RDB3.conv_1x1.0", "high.rdb3.local_fusion"),
    ("rdball.0", "high.global_fusion"),  # 1x1 over cat[r1, r2, r3]
    ("conv_rdb8x.0", "high.lift"),  # 3x3, 4->64 after pixel_shuffle(4)
    ("resblock8x.conv1.0", "medium.conv1"),  # followed by LeakyReLU(0.2)
    ("resblock8x.conv2.0", "medium.conv2"),
    ("conv32_8_cat.0.0", "fuse1.grouped"),  # 3x3, 128->32, 4 groups
    ("conv32_8_cat.1.0", "fuse1.expand"),  # 3x3, 32->192, then LeakyReLU(0.2)
    ("conv2x.0", "low"),  # 5x5, 4->12
    ("conv_2_8_32.0", "fuse2"),  # 5x5, 24->12
)

# Old-style weight norm name -> parametrization name (same tensors, same meaning).
TENSOR_MAP: tuple[tuple[str, str], ...] = (
    ("bias", "bias"),
    ("weight_g", "parametrizations.weight.original0"),
    ("weight_v", "parametrizations.weight.original1"),
)


WHAT_TO_GIVE = (
    "give the authors' published checkpoint of the real-time low-light network (Lamba & Mitra, "
    "CVPR 2021), downloaded by yourself (darkraw does not ship it), complete and unmodified"
)


class ReferenceCheckpointError(DataError):
    """The file is not (or not entirely) the authors' published checkpoint."""


def key_map(net: DarkRestorationNet) -> dict[str, str]:
    """Every reference tensor name -> darkraw state-dict key, in reference order.

    Only names whose darkraw counterpart exists are produced (convs without bias have none), so
    the map is exactly as long as the reference checkpoint.
    """
    ours = net.state_dict()
    mapping: dict[str, str] = {}
    for ref_conv, our_conv in CONV_MAP:
        for ref_suffix, our_suffix in TENSOR_MAP:
            our_key = f"{our_conv}.{our_suffix}"
            if our_key in ours:
                mapping[f"{ref_conv}.{ref_suffix}"] = our_key
    return mapping


def _require_reference_variant(net: DarkRestorationNet) -> None:
    if getattr(net, "rdb", None) != REFERENCE_RDB:
        raise ValueError(
            f"the reference checkpoint is the paper's RDB* network (rdb='{REFERENCE_RDB}'); got a "
            f"network with rdb={getattr(net, 'rdb', None)!r}: build DarkRestorationNet("
            f"rdb='{REFERENCE_RDB}')"
        )


def _list(lines: Sequence[str], limit: int = 70) -> str:
    shown = "\n".join(f"  - {line}" for line in lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return shown + more


def find_problems(
    reference: Mapping[str, Any], net: DarkRestorationNet
) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and mis-shaped (or non-tensor, or non-finite) entries, each a
    printable line."""
    mapping = key_map(net)
    ours = net.state_dict()
    missing = [
        f"{k} (expected {describe_shape(ours[v])})"
        for k, v in mapping.items() if k not in reference
    ]
    unexpected = [
        f"{k} ({describe_shape(v)})"
        for k, v in reference.items()
        if k not in mapping
    ]
    wrong = []
    for ref_key, our_key in mapping.items():
        if ref_key not in reference:
            continue
        value = reference[ref_key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            wrong.append(f"{ref_key}: a {kind}, expected a floating-point tensor")
        elif value.shape != ours[our_key].shape:
            wrong.append(
                f"{ref_key}: {describe_shape(value)} in the file, expected "
                f"{describe_shape(ours[our_key])} (-> {our_key})"
            )
        elif nonfinite_tensors(value):
            # A network with NaN weights writes black images: never a checkpoint to hand on.
            wrong.append(f"{ref_key}: holds NaN or inf values (a damaged or diverged file)")
    return missing, unexpected, wrong


def _problem_report(missing: list[str], unexpected: list[str], wrong: list[str],
                    source: str) -> str:
    parts = [f"{source} does not match the reference network (rdb='{REFERENCE_RDB}', "
             f"{REFERENCE_TENSOR_COUNT} tensors):"]
    if missing:
        parts.append(f"{len(missing)} missing tensor(s):\n{_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s):\n{_list(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} tensor(s) of the wrong shape, type or values:\n"
                     f"{_list(wrong)}")
    parts.append(
        "Give the authors' published checkpoint of the real-time network (Lamba & Mitra, CVPR "
        "2021) unchanged; `python -m lightning_modules.reference_import --list-keys` lists the "
        "tensor names and shapes it must hold."
    )
    return "\n".join(parts)


def load_reference_state_dict(net: DarkRestorationNet, reference: Mapping[str, Any],
                              source: str = "the reference state dict") -> DarkRestorationNet:
    """Copy the reference tensors into ``net`` (in place), after checking every one of them.

    Nothing is copied unless all 63 names and shapes match: a partial import would give a
    network that runs and quietly produces wrong images.
    """
    _require_reference_variant(net)
    missing, unexpected, wrong = find_problems(reference, net)
    if missing or unexpected or wrong:
        raise ReferenceCheckpointError(_problem_report(missing, unexpected, wrong, source))
    ours = {our: reference[ref].detach().to(torch.float32) for ref, our in key_map(net).items()}
    net.load_state_dict(ours, strict=True)
    return net


def to_reference_state_dict(net: DarkRestorationNet) -> dict[str, torch.Tensor]:
    """darkraw weights in the authors' layout (names, order, old-style weight norm), on CPU.

    Lets tests round-trip, and lets a darkraw-trained network run in the authors' code.
    """
    _require_reference_variant(net)
    ours = net.state_dict()
    return {ref: ours[our].detach().cpu().clone() for ref, our in key_map(net).items()}


def expected_keys_table() -> str:
    """Tab-separated reference name, shape and darkraw key, in the authors' order.

    The same facts as the spec's key list, derived from the mapping the importer really uses,
    so users can check a file they downloaded without that list.
    """
    net = DarkRestorationNet(rdb=REFERENCE_RDB)
    ours = net.state_dict()
    rows = ["reference_key\tshape\tdarkraw_key"]
    rows += [f"{ref}\t{describe_shape(ours[our])}\t{our}" for ref, our in key_map(net).items()]
    return "\n".join(rows)


def read_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``model`` state dict of the authors' file, loaded without executing pickled code."""
    from darkraw.checkpoints import load_torch_file, strip_key_prefixes

    path = Path(path)
    try:
        payload = load_torch_file(path, "reference", WHAT_TO_GIVE)
    except DataError as error:
        raise ReferenceCheckpointError(str(error)) from error
    if not isinstance(payload, Mapping):
        raise ReferenceCheckpointError(
            f"{path} holds a {type(payload).__name__}, not a dict: the authors' checkpoint is a "
            "dict {'model': state_dict}"
        )
    if "model" not in payload:
        hint = ""
        if "state_dict" in payload:
            from darkraw.checkpoints import is_darkraw_checkpoint

            hint = (" (this is already a darkraw checkpoint: it needs no import, pass it as "
                    "ckpt=... directly)" if is_darkraw_checkpoint(payload) else
                    " (this is a Lightning checkpoint of some other model, not the authors' file)")
        raise ReferenceCheckpointError(
            f"{path} has no 'model' entry (keys: {sorted(map(str, payload))[:10]}){hint}; the "
            "authors' checkpoint is a dict {'model': state_dict}"
        )
    state = payload["model"]
    if not isinstance(state, Mapping):
        raise ReferenceCheckpointError(
            f"{path}: 'model' holds a {type(state).__name__}, expected a state dict of tensors"
        )
    # The authors' network saved from nn.DataParallel carries "module." on every key.
    return strip_key_prefixes(state, ("module.",))


def import_reference(path: str | Path) -> DarkRestorationNet:
    """A darkraw network (rdb='before') carrying the weights of the authors' checkpoint."""
    net = DarkRestorationNet(rdb=REFERENCE_RDB)
    return load_reference_state_dict(net, read_reference_checkpoint(path), source=str(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lightning_checkpoint(net: DarkRestorationNet, **provenance: Any) -> dict[str, Any]:
    """A checkpoint dict that ``RestorationModule.load_from_checkpoint`` accepts, with no Trainer.

    It holds the module's weights and hyper-parameters (so the checkpoint alone rebuilds the
    module) but no optimizer or loop state: use it for evaluation, restoration or as initial
    weights, not to resume a run with ``ckpt_path``.
    """
    import lightning

    from lightning_modules.module import RestorationModule

    module = RestorationModule(net={"rdb": net.rdb})
    module.net.load_state_dict(net.state_dict(), strict=True)
    return {
        "state_dict": module.state_dict(),
        RestorationModule.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "darkraw": dict(provenance),
    }


def save_checkpoint(checkpoint: Mapping[str, Any], out: str | Path) -> Path:
    """Write through a temporary file in the same folder, so a crash leaves no half file.

    The temporary file goes whenever the write or the final rename fails (a folder at ``out``,
    a full disk, an unpicklable value, Ctrl-C): left behind, a hidden 3 MB ``.partial`` would
    pile up beside the checkpoints with nothing to say what it is.
    """
    out = Path(out)
    with replaced_when_complete(out) as partial:
        torch.save(dict(checkpoint), partial)
    return out


def convert(reference_path: str | Path, out: str | Path) -> Path:
    """Reference ``.pt`` -> darkraw Lightning checkpoint; returns the written path."""
    reference_path = Path(reference_path)
    net = import_reference(reference_path)
    checkpoint = lightning_checkpoint(
        net, source="reference_import", reference_file=reference_path.name,
        reference_sha256=_sha256(reference_path),
    )
    return save_checkpoint(checkpoint, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.reference_import",
        description="Convert the authors' published checkpoint ({'model': state_dict}) into a "
        "darkraw Lightning checkpoint (RestorationModule, rdb='before').",
    )
    parser.add_argument("reference", type=Path, nargs="?", help="the authors' .pt file")
    parser.add_argument("out", type=Path, nargs="?",
                        help="the darkraw checkpoint to write (.ckpt)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing out file")
    parser.add_argument("--list-keys", action="store_true",
                        help="print the tensor names and shapes the authors' file must hold, "
                        "and the darkraw weights each one goes to, then exit")
    args = parser.parse_args(argv)
    if args.list_keys:
        print(expected_keys_table())
        return 0
    if args.reference is None or args.out is None:
        parser.error("give the authors' .pt file and the .ckpt to write (or --list-keys)")
    if args.out.is_dir():
        # Even with --force: a folder is never what was meant to be overwritten, and the
        # rename onto it would fail only after the whole conversion.
        print(f"darkraw: error: {args.out} is a folder: name the checkpoint file to write "
              f"inside it, e.g. {args.out / (args.reference.stem + '.ckpt')}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.force:
        print(f"darkraw: error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        written = convert(args.reference, args.out)
    except ReferenceCheckpointError as error:
        print(f"darkraw: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"darkraw: error: cannot write {args.out} ({error.strerror or error}): choose a "
              "writable path for the converted checkpoint", file=sys.stderr)
        return 1
    print(f"wrote {written} ({REFERENCE_TENSOR_COUNT} reference tensors, rdb='{REFERENCE_RDB}'); "
          f"use it as e.g. `python eval.py ckpt={written}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())

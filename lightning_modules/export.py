"""ONNX export of the folded network, and a check of ONNX Runtime against PyTorch.

Weight norm is folded first: the exported graph then holds plain convs with constant weights, not
a norm-divide-multiply per conv that every runtime would recompute on every call.

Batch, height and width are dynamic. Height and width are declared as ``16 * k`` (the packed
size must be a multiple of 16), which is what lets ``torch.export`` prove the pixel
(un)shuffles exact; an input whose packed size is not a multiple of 16 is refused by the runtime.

After writing, the CLI runs the file in ONNX Runtime at two sizes and compares it with PyTorch:
above :data:`ONNX_TOLERANCE` it exits 1 and removes the file (:func:`check_export` says why).

    python -m lightning_modules.export ckpt=path/to/last.ckpt out=model.onnx
    python -m lightning_modules.export --ckpt path/to/last.ckpt --out model.onnx --opset 18
    python -m lightning_modules.export --ckpt path/to/last.ckpt --out model.onnx --no-check
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_modules.inference import InferenceNet, fold_weight_norm
from lightning_modules.network import INPUT_CHANNELS, PACKED_MULTIPLE

INPUT_NAME = "packed"
OUTPUT_NAME = "rgb"
# Upper bounds only bound what torch.export reasons about, not what the runtime accepts in
# practice; generous enough for 8K sensors (packed 4096 x 4096 is 8192 x 8192 full resolution).
MAX_BATCH = 1024
MAX_PACKED_BLOCKS = 4096 // PACKED_MULTIPLE


def example_input(batch: int = 1, height: int = 64, width: int = 64,
                  seed: int = 0) -> torch.Tensor:
    """A packed input in the range the network sees (amplified, well above 1 in places)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, INPUT_CHANNELS, height, width, generator=generator) * 8.0


def _dynamic_shapes() -> dict[str, dict[int, object]]:
    from torch.export import Dim

    blocks_h = Dim("packed_h_div16", min=1, max=MAX_PACKED_BLOCKS)
    blocks_w = Dim("packed_w_div16", min=1, max=MAX_PACKED_BLOCKS)
    return {"x": {0: Dim("batch", min=1, max=MAX_BATCH),
                  2: PACKED_MULTIPLE * blocks_h, 3: PACKED_MULTIPLE * blocks_w}}


def _quiet_export(*args: object, **kwargs: object) -> object:
    # The exporter logs progress lines and warns about optional torchvision ops; neither helps.
    # onnxscript logs a failed opset conversion as a traceback; export_onnx reports it instead.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL if logger.name == "onnxscript" else logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)


def export_onnx(net: nn.Module, out: str | Path, *, example: torch.Tensor | None = None,
                dynamic: bool = True, opset: int | None = None) -> Path:
    """Write ``net`` (weight norm folded, float32) to ``out`` as ONNX.

    If the exporter cannot keep the axes dynamic, this fails instead of silently writing a
    fixed-size model; pass ``dynamic=False`` to ask for one (sized like ``example``).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(net, InferenceNet):
        net = net.net  # the wrapper's inference_mode and casts are not part of the graph
    # Always a private copy (folding one that needs none just copies it): the cast to float32
    # below is in place and must not touch the caller's network.
    model = fold_weight_norm(net).eval().float()
    x = example_input() if example is None else example.float()
    kwargs: dict[str, object] = {
        "dynamo": True, "input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
        "verbose": False, "optimize": True,
        # One self-contained file (3 MB): the default puts the weights in a second file,
        # `<out>.data`, which breaks a model copied without it.
        "external_data": False,
    }
    if dynamic:
        kwargs["dynamic_shapes"] = _dynamic_shapes()
    if opset is not None:
        kwargs["opset_version"] = opset
    with torch.no_grad():
        _quiet_export(model, (x,), str(out), **kwargs)
    # Weights an earlier export left beside it would be mistaken for this model's.
    Path(f"{out}.data").unlink(missing_ok=True)
    if opset is not None and written_opset(out) != opset:
        # torch's exporter builds opset 18+ graphs and converts down when asked; where that
        # conversion fails it keeps its own opset without a word. A runtime that needs the
        # asked-for opset would then refuse the file far from here.
        got = written_opset(out)
        out.unlink()
        raise OpsetUnavailableError(
            f"--opset {opset} could not be produced: torch {torch.__version__}'s ONNX exporter "
            f"wrote opset {got} instead, since onnx's version converter cannot take every operator "
            f"down to {opset} (no file was kept): choose a newer opset, or leave --opset out"
        )
    return out


class OpsetUnavailableError(ValueError):
    """The exporter silently wrote another ONNX opset than the one asked for."""


def written_opset(onnx_path: str | Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_session(onnx_path: str | Path, threads: int | None = None):  # -> ort.InferenceSession
    """A CPU ONNX Runtime session; ``threads`` defaults to what PyTorch uses, for fair timings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def run_onnx(session: object, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {INPUT_NAME: x.detach().cpu().float().numpy()})[0]  # type: ignore[attr-defined]


def check_onnx(onnx_path: str | Path, net: nn.Module, input: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch on ``input``.

    ``net`` may be the training form or the folded one: both compute the same function. A NaN
    anywhere in either output makes the result NaN (``np.abs(...).max()`` propagates it), which
    :func:`verify_onnx` treats as a failure.
    """
    with torch.inference_mode():
        expected = net(input.float()).float().cpu().numpy()
    actual = run_onnx(onnx_session(onnx_path), input)
    if actual.shape != expected.shape:
        raise OnnxCheckError(
            f"{onnx_path}: ONNX output shape {actual.shape} differs from PyTorch's "
            f"{expected.shape} for input {tuple(input.shape)}"
        )
    return float(np.abs(actual - expected).max())


# Largest max-abs difference between ONNX Runtime and PyTorch that still counts as the same model.
# The output is clamped to [0, 1], so this absolute bound is also 1e-4 of the output's full range.
# Measured on the real network: about 2.6e-5 (float32 convs summing in another order), so a
# correct export passes with a 4x margin; a wrong one (a lost fold, swapped weights, a mis-traced
# shuffle) is off by far more: a 0.02 change to one bias already fails it (tests/test_export.py).
ONNX_TOLERANCE = 1e-4


class OnnxCheckError(AssertionError):
    """ONNX Runtime does not compute what PyTorch computes (shape, or numbers beyond tolerance)."""


def verify_onnx(onnx_path: str | Path, net: nn.Module, sizes: Sequence[tuple[int, int]],
                tolerance: float = ONNX_TOLERANCE) -> list[float]:
    """The max abs difference at each packed ``(height, width)``; raises if one is too large.

    Returning the diffs without judging them made the check a printout that could not fail: an
    export off by 0.5 exited 0 like a good one. NaN counts as too large (``nan > tol`` is False).
    """
    diffs: list[float] = []
    for h, w in sizes:
        diff = check_onnx(onnx_path, net, example_input(1, h, w, seed=1))
        if not diff <= tolerance:
            raise OnnxCheckError(
                f"{onnx_path}: ONNX Runtime differs from PyTorch by max abs {diff:.2e} at packed "
                f"{h}x{w}, above the tolerance {tolerance:.0e}"
            )
        diffs.append(diff)
    return diffs


def check_export(onnx_path: Path, net: nn.Module, sizes: Sequence[tuple[int, int]],
                 tolerance: float = ONNX_TOLERANCE, shown_as: Path | None = None) -> int:
    """The CLI's check: print each size's diff; on a failure remove the file and return 1.

    The file is removed rather than kept with a warning: a script (or a person skimming the log)
    that sees ``model.onnx`` beside an exit status it did not look at would ship a model known to
    be wrong, and the opset refusal already keeps no file. Whoever wants the file anyway, to
    inspect it, gets it from ``--no-check``, which the error says.

    ``shown_as``: the file the user asked for, when ``onnx_path`` is the temporary file the
    export was written to (messages name it; a file already there is left as it was).
    """
    try:
        diffs = verify_onnx(onnx_path, net, sizes, tolerance)
    except OnnxCheckError as error:
        onnx_path.unlink(missing_ok=True)
        reason = str(error) if shown_as is None else str(error).replace(str(onnx_path),
                                                                         str(shown_as))
        kept = ("so no file was kept" if shown_as is None else
                f"so {shown_as} was not written (a file already there is left as it was)")
        print(f"darkraw: error: {reason}; the export is wrong, {kept} (--no-check writes it "
              "unchecked, e.g. to inspect it)", file=sys.stderr)
        return 1
    for (h, w), diff in zip(sizes, diffs, strict=True):
        print(f"onnxruntime vs PyTorch at packed {h}x{w}: max abs diff {diff:.2e} "
              f"(tolerance {tolerance:.0e})")
    return 0


KEY_VALUE = re.compile(r"([A-Za-z_][\w-]*)=(.*)", re.DOTALL)


def _option_action(parser: argparse.ArgumentParser, token: str) -> argparse.Action | None:
    """The option ``token`` names as argparse would read it: exactly, or a unique ``--`` prefix.

    argparse accepts ``--ck`` for ``--ckpt``; the value after it must be left alone just as
    after ``--ckpt``. ``--ckpt=path`` carries its value and names no option awaiting one.
    """
    actions = [a for a in parser._actions if token in a.option_strings]
    if not actions and token.startswith("--") and parser.allow_abbrev:
        actions = [a for a in parser._actions
                   if any(opt.startswith(token) for opt in a.option_strings)]
    return actions[0] if len(actions) == 1 else None


def _key_value_to_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Accept Hydra-style ``ckpt=... out=...`` as well as ``--ckpt ... --out ...``.

    Only a token where an option may start is rewritten, and only when its key names one of
    ``parser``'s options: the value after ``--ckpt`` or ``--out`` is left as it is, since paths
    of Hydra sweep folders hold ``=`` themselves (``seed=1/checkpoints/last.ckpt``,
    ``lr=1e-4.onnx``) and rewriting them turned a path into an unknown flag. An unknown key is
    refused here, by name and with the closest option, instead of reaching argparse as a stray
    argument reported far from what was mistyped.
    """
    from darkraw.suggest import did_you_mean

    options = {opt[2:]: action for action in parser._actions for opt in action.option_strings
               if opt.startswith("--")}
    flags: list[str] = []
    takes_value: str | None = None  # the nargs of the option just read, while it awaits a value
    for index, token in enumerate(argv):
        if token == "--":
            flags.extend(argv[index:])
            break
        match = KEY_VALUE.fullmatch(token)
        key = match.group(1).replace("_", "-") if match else None
        if takes_value is not None and not (takes_value == "?" and key in options):
            flags.append(token)  # the value of the option before it, whatever it holds
            takes_value = None
            continue
        takes_value = None
        if token.startswith("-"):
            action = _option_action(parser, token)
            if action is not None and action.nargs != 0:
                takes_value = "?" if action.nargs == "?" else "1"
            flags.append(token)
        elif match and key in options:
            action = options[key]
            if action.nargs == 0:  # a switch: static=true is --static, static=false nothing
                try:
                    on = parse_bool(match.group(2))
                except argparse.ArgumentTypeError as error:
                    parser.error(f"{token}: {error}")
                flags.extend([f"--{key}"] if on else [])
            else:
                flags.extend([f"--{key}", match.group(2)])
        elif match:
            hint = did_you_mean(key, options, "") or f"the options are {sorted(options)}"
            parser.error(f"{token}: {match.group(1)} is not an option of this command: {hint}")
        else:
            flags.append(token)
    return flags


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.export",
        description="Export a darkraw checkpoint's network (weight norm folded) to ONNX with "
        "dynamic batch, height and width (packed sizes: multiples of 16).",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="darkraw Lightning checkpoint")
    parser.add_argument("--out", type=Path, default=Path("model.onnx"))
    parser.add_argument("--height", type=int, default=64, help="packed height of the trace input")
    parser.add_argument("--width", type=int, default=64, help="packed width of the trace input")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the exporter's own; it writes 18 and newer)")
    parser.add_argument("--static", action="store_true", help="fixed input size, no dynamic axes")
    parser.add_argument("--check", type=parse_bool, nargs="?", const=True, default=True,
                        help="compare ONNX Runtime with PyTorch afterwards (default true; "
                        "--check false or --no-check skips it)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the ONNX Runtime comparison")
    return parser.parse_args(_key_value_to_flags(argv, parser))


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}


def parse_bool(text: str) -> bool:
    """A strict yes/no: a typo such as ``--check ture`` must not silently skip the check."""
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a yes/no value: use true or false"
        ) from None


def check_output_path(out: Path) -> str | None:
    """Why ``out`` cannot be written, before the export spends its time; None if it can."""
    if out.is_dir():
        return f"out={out} is a folder: give the .onnx file to write, e.g. {out / 'model.onnx'}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return (f"out={out}: cannot create its folder {out.parent} "
                f"({error.strerror or error}): choose a writable path")
    if not os.access(out.parent, os.W_OK):
        return f"out={out}: its folder {out.parent} is not writable: choose a writable path"
    return None


def newest_onnx_opset() -> int:
    import onnx

    return int(onnx.defs.onnx_opset_version())


class _Rejected(Exception):
    """The export failed its check: leave the block without renaming the file into place."""


def main(argv: Sequence[str] | None = None) -> int:
    from darkraw.checkpoints import load_network
    from darkraw.disk import replaced_when_complete
    from darkraw.errors import DarkrawError

    args = _parse(sys.argv[1:] if argv is None else argv)
    for name in ("height", "width"):
        value = getattr(args, name)
        if value <= 0 or value % PACKED_MULTIPLE:
            print(f"darkraw: error: {name}={value} must be a positive multiple of "
                  f"{PACKED_MULTIPLE} (packed pixels)", file=sys.stderr)
            return 2
    newest = newest_onnx_opset()
    if args.opset is not None and not 1 <= args.opset <= newest:
        print(f"darkraw: error: opset={args.opset} is not an ONNX opset this onnx package knows: "
              f"choose one up to {newest} (the exporter writes 18 and newer)", file=sys.stderr)
        return 2
    problem = check_output_path(args.out)
    if problem:
        print(f"darkraw: error: {problem}", file=sys.stderr)
        return 1
    try:
        net = fold_weight_norm(load_network(args.ckpt, torch.device("cpu")))
    except DarkrawError as error:
        print(f"darkraw: error: {error}", file=sys.stderr)
        return 1
    example = example_input(1, args.height, args.width)
    # Exported and checked under a temporary name, renamed into place only when good: a failed
    # re-export then leaves the previous model.onnx as it was, instead of deleting it.
    replacing = args.out.exists()
    try:
        with replaced_when_complete(args.out) as partial:
            export_onnx(net, partial, example=example, dynamic=not args.static,
                        opset=args.opset)
            if args.check:
                sizes = [(args.height, args.width)]
                if not args.static:
                    sizes.append((args.height + PACKED_MULTIPLE,
                                  args.width + 2 * PACKED_MULTIPLE))
                if check_export(partial, net, sizes, shown_as=args.out):
                    raise _Rejected  # said by check_export; nothing is renamed into place
    except OpsetUnavailableError as error:
        print(f"darkraw: error: {error}", file=sys.stderr)
        return 1
    except _Rejected:
        return 1
    print(f"wrote {args.out} ({'static' if args.static else 'dynamic batch/height/width'}"
          f"{'; replaced the file that was there' if replacing else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

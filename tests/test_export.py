from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lightning_modules.export import (
    INPUT_NAME,
    ONNX_TOLERANCE,
    OnnxCheckError,
    _parse,
    check_export,
    check_onnx,
    example_input,
    main,
    onnx_session,
    run_onnx,
    verify_onnx,
)
from lightning_modules.network import DarkRestorationNet
from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint
from tests.helpers import perturbed_net


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DarkRestorationNet]:
    """One export through the CLI for the whole file: the exporter takes ~10 s.

    It runs as users run it on a sweep's result: relative paths holding ``=`` (a Hydra job
    folder, an output named after its settings), given after flags; the ONNX check is on, so
    the export must also pass it.
    """
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export")
    net = perturbed_net()
    save_checkpoint(lightning_checkpoint(net), folder / "seed=1" / "checkpoints" / "last.ckpt")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["--ckpt", "seed=1/checkpoints/last.ckpt", "--out", "lr=1e-4.onnx",
                     "height=32", "width=48"]) == 0
    return folder / "lr=1e-4.onnx", net


@pytest.mark.parametrize("shape", [(1, 4, 32, 48), (1, 4, 64, 64), (2, 4, 48, 96)])
def test_onnxruntime_matches_pytorch_at_several_sizes(
    exported: tuple[Path, DarkRestorationNet], shape: tuple[int, int, int, int]
) -> None:
    path, net = exported
    x = example_input(*[shape[0], *shape[2:]], seed=3)
    assert check_onnx(path, net, x) < 1e-4


def test_axes_are_dynamic_and_weight_norm_is_gone(
    exported: tuple[Path, DarkRestorationNet],
) -> None:
    path, _ = exported
    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    assert graph_input.name == INPUT_NAME
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[1].dim_value == 4
    assert all(dims[i].dim_param for i in (0, 2, 3))  # symbolic batch, height, width
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 27
    assert not {"ReduceL2", "LpNormalization", "Sqrt"} & set(ops)  # no norm recomputed per call


def test_the_model_is_one_self_contained_file(exported: tuple[Path, DarkRestorationNet],
                                              tmp_path: Path) -> None:
    path, net = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["lr=1e-4.onnx", "seed=1"]
    moved = tmp_path / "elsewhere.onnx"  # copied alone, as users copy models
    moved.write_bytes(path.read_bytes())
    assert check_onnx(moved, net, example_input(1, 32, 48, seed=1)) < 1e-4


def test_the_runtime_refuses_sizes_the_network_cannot_take(
    exported: tuple[Path, DarkRestorationNet],
) -> None:
    path, _ = exported
    session = onnx_session(path)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own exception types
        run_onnx(session, torch.rand(1, 4, 40, 48))
    assert np.isfinite(run_onnx(session, torch.rand(1, 4, 16, 16))).all()


def test_cli_accepts_both_argument_styles() -> None:
    hydra_style = _parse(["ckpt=a.ckpt", "out=b.onnx", "height=32"])
    flag_style = _parse(["--ckpt", "a.ckpt", "--out", "b.onnx", "--height", "32"])
    assert vars(hydra_style) == vars(flag_style)
    assert hydra_style.ckpt == Path("a.ckpt") and hydra_style.height == 32


@pytest.mark.parametrize("argv", [
    ["--ckpt", "seed=1/checkpoints/last.ckpt", "--out", "lr=1e-4.onnx"],
    ["ckpt=seed=1/checkpoints/last.ckpt", "out=lr=1e-4.onnx"],
    ["--ck", "seed=1/checkpoints/last.ckpt", "--out=lr=1e-4.onnx"],  # argparse's abbreviation
    ["--check", "ckpt=seed=1/checkpoints/last.ckpt", "--out", "lr=1e-4.onnx"],
])
def test_cli_leaves_values_holding_equals_signs_alone(argv: list[str]) -> None:
    """``--ckpt seed=1/...`` was rewritten to ``--ckpt --seed 1/...``: expected one argument."""
    args = _parse(argv)
    assert args.ckpt == Path("seed=1/checkpoints/last.ckpt")
    assert args.out == Path("lr=1e-4.onnx") and args.check is True


def test_cli_switches_take_key_value_and_unknown_keys_are_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _parse(["ckpt=a.ckpt", "static=true", "no_check=true"]).static is True
    assert _parse(["ckpt=a.ckpt", "static=false"]).static is False
    assert _parse(["ckpt=a.ckpt", "no-check=true"]).check is False
    with pytest.raises(SystemExit) as info:
        _parse(["ckp=a.ckpt"])
    assert info.value.code == 2
    assert "ckp=a.ckpt: ckp is not an option of this command: did you mean ckpt?" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        _parse(["ckpt=a.ckpt", "static=ture"])
    assert "static=ture: 'ture' is not a yes/no value" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["slightly other weights", "a NaN weight"])
def test_the_check_fails_when_onnx_disagrees_with_the_network(
    exported: tuple[Path, DarkRestorationNet], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], change: str,
) -> None:
    """The check only printed the diff and exited 0: an export off by any amount passed.

    The exported file is compared with a network it was not exported from, through the very
    check the CLI runs; the same file against its own network passes it.
    """
    path, net = exported
    model = tmp_path / "model.onnx"
    model.write_bytes(path.read_bytes())
    sizes = [(32, 48), (48, 80)]
    assert check_export(model, net, sizes) == 0
    assert "(tolerance 1e-04)" in capsys.readouterr().out and model.is_file()

    other = copy.deepcopy(net)
    with torch.no_grad():
        other.fuse2.bias[0] += float("nan") if change == "a NaN weight" else 0.02
    with pytest.raises(OnnxCheckError, match=r"max abs .* at packed 32x48, above the tolerance"):
        verify_onnx(model, other, sizes)
    assert check_export(model, other, sizes) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{model}: ONNX Runtime differs from PyTorch by max abs" in line
    assert f"above the tolerance {ONNX_TOLERANCE:.0e}" in line and "--no-check" in line
    assert not model.exists()  # a model known to be wrong is not left looking like a good one


def test_cli_rejects_bad_sizes_and_missing_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([f"ckpt={tmp_path / 'x.ckpt'}", "height=40"]) == 2
    assert "height=40 must be a positive multiple of 16" in capsys.readouterr().err
    assert main([f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path / 'm.onnx'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_refuses_an_opset_it_cannot_write_and_typos_in_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exporter wrote opset 18 when asked for 11, and ``--check ture`` skipped the check."""
    from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint
    from tests.helpers import perturbed_net

    ckpt = save_checkpoint(lightning_checkpoint(perturbed_net()), tmp_path / "ours.ckpt")
    out = tmp_path / "m.onnx"
    assert main([f"ckpt={ckpt}", f"out={out}", "opset=11", "check=false"]) == 1
    assert "--opset 11 could not be produced" in capsys.readouterr().err
    assert not out.exists()
    # A failed re-export leaves the good file there as it was (it used to be deleted), and a
    # good one says it replaced it; no temporary file is left beside it either way.
    assert main([f"ckpt={ckpt}", f"out={out}", "check=false"]) == 0
    good = out.read_bytes()
    assert main([f"ckpt={ckpt}", f"out={out}", "opset=11", "check=false"]) == 1
    assert out.read_bytes() == good
    assert main([f"ckpt={ckpt}", f"out={out}", "check=false"]) == 0
    assert "; replaced the file that was there)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "ours.ckpt"]
    assert main([f"ckpt={ckpt}", f"out={out}", "opset=999"]) == 2
    assert "opset=999" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([f"ckpt={ckpt}", "--check", "ture"])
    assert _parse([f"ckpt={ckpt}", "--check"]).check is True
    assert _parse([f"ckpt={ckpt}", "--no-check"]).check is False
    assert main([f"ckpt={ckpt}", f"out={tmp_path}"]) == 1
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main([f"ckpt={ckpt}", f"out={blocker / 'x.onnx'}"]) == 1
    assert "cannot create its folder" in capsys.readouterr().err

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lightning_modules.export import (
    INPUT_NAME,
    _parse,
    check_onnx,
    example_input,
    main,
    onnx_session,
    run_onnx,
)
from lightning_modules.network import DarkRestorationNet
from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint
from tests.helpers import perturbed_net


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DarkRestorationNet]:
    """One export through the CLI for the whole file: the exporter takes ~10 s."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export")
    net = perturbed_net()
    ckpt = save_checkpoint(lightning_checkpoint(net), folder / "net.ckpt")
    out = folder / "model.onnx"
    assert main([f"ckpt={ckpt}", f"out={out}", "height=32", "width=48", "check=false"]) == 0
    return out, net


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
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "net.ckpt"]
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

"""What eval.py, restore.py and export say about every kind of file passed as ``ckpt=``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from darkraw.checkpoints import load_inference_network, load_network, pick_device
from darkraw.errors import ConfigError, DataError
from lightning_modules.inference import InferenceNet
from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint
from tests.helpers import perturbed_net


@pytest.fixture(scope="module")
def darkraw_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(lightning_checkpoint(perturbed_net()), folder / "ours.ckpt")


def not_a_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("e" * 300)  # torch.load raised KeyError: 101 on this
    elif kind == "numpy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)  # gave IndexError
    elif kind == "truncated":
        data = (Path(__file__).parent / "__init__.py").read_bytes()
        torch.save({"state_dict": {"net.w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300] + data)
    elif kind == "pickle":
        torch.save({"state_dict": {"net.w": torch.zeros(1)}, "path": Path("x")}, path)
    elif kind == "lfs":  # a clone without `git lfs pull`
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                        f"{'0' * 64}\nsize 3145728\n")
    elif kind == "html":  # a file host's page instead of the file
        path.write_text("\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan "
                        "warning</title></head></html>")
    elif kind == "empty":
        path.touch()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 2)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("text", r"text\.ckpt is a text file \(it starts with 'eeeee+'\), not a PyTorch checkpoint: "
             r"give a checkpoint written by train\.py"),
    ("numpy", r"numpy\.ckpt is a NumPy array file \(\.npy\), not a PyTorch checkpoint: give"),
    ("png", r"png\.ckpt is a PNG image, not a PyTorch checkpoint: give"),
    ("tensor", r"holds a Tensor, not a checkpoint dict"),
    ("truncated", r"truncated\.ckpt (could not be read|is not a PyTorch)"),
    ("pickle", r"pickle\.ckpt holds pickled Python objects \(pathlib\.\w*Path\)"),
    ("binary", r"binary\.ckpt (is not a PyTorch checkpoint file|could not be read)"),
    # Each of these says what to do about it instead of "give a checkpoint written by train.py".
    ("lfs", r"lfs\.ckpt is a Git LFS pointer \(.*\), not a PyTorch checkpoint: fetch the file "
            r"itself with `git lfs pull`"),
    ("html", r"html\.ckpt is an HTML web page \(a download link that returned the site's page.*"
             r"download the file again"),
    ("empty", r"empty\.ckpt is an empty file \(0 bytes\), not a PyTorch checkpoint: copy or "
              r"download it again"),
])
def test_files_that_are_no_checkpoint_are_named_and_explained(tmp_path: Path, kind: str,
                                                              message: str) -> None:
    path = not_a_checkpoint(tmp_path, kind)
    with pytest.raises(DataError, match=message) as caught:
        load_network(path, torch.device("cpu"))
    assert "weights_only=False" not in str(caught.value)  # torch's unsafe advice is not passed on
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


def test_other_checkpoints_say_what_they_are(tmp_path: Path) -> None:
    authors = tmp_path / "authors.pt"
    torch.save({"model": {"conv2x.0.bias": torch.zeros(12)}}, authors)
    with pytest.raises(DataError, match="looks like the authors' published checkpoint.*"
                                        "reference_import"):
        load_network(authors, torch.device("cpu"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"encoder.w": torch.zeros(1)}, "hyper_parameters": {}}, foreign)
    with pytest.raises(DataError, match="not of darkraw's RestorationModule"):
        load_network(foreign, torch.device("cpu"))
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_network(tmp_path, torch.device("cpu"))
    with pytest.raises(DataError, match="absent.ckpt does not exist"):
        load_network(tmp_path / "absent.ckpt", torch.device("cpu"))


def test_a_darkraw_checkpoint_with_other_shapes_is_explained(tmp_path: Path,
                                                              darkraw_checkpoint: Path) -> None:
    checkpoint = torch.load(darkraw_checkpoint, weights_only=True)
    checkpoint["state_dict"]["net.low.bias"] = torch.zeros(5)
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(DataError, match="does not fit this version's network"):
        load_network(edited, torch.device("cpu"))


def test_eval_and_restore_get_the_inference_form_with_the_same_outputs(
        darkraw_checkpoint: Path) -> None:
    training_form = load_network(darkraw_checkpoint, torch.device("cpu"))
    inference_form = load_inference_network(darkraw_checkpoint, torch.device("cpu"))
    assert isinstance(inference_form, InferenceNet)
    assert not any(p.requires_grad for p in inference_form.parameters())
    x = torch.rand(1, 4, 48, 80, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        expected = training_form(x)
    assert float((inference_form(x) - expected).abs().max()) < 3e-5


def test_a_checkpoint_read_once_serves_the_network_without_a_second_read(
        tmp_path: Path, darkraw_checkpoint: Path) -> None:
    """eval.py reads the file once for the network and its record: a copy that is gone after
    that read must still give the same network (a second read would fail on the missing file)."""
    from darkraw.checkpoints import read_darkraw_checkpoint

    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(darkraw_checkpoint.read_bytes())
    checkpoint = read_darkraw_checkpoint(copy)
    copy.unlink()
    net = load_inference_network(copy, torch.device("cpu"), checkpoint)
    expected = load_inference_network(darkraw_checkpoint, torch.device("cpu"))
    x = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), expected(x))


def test_hyper_parameters_this_version_does_not_know_are_explained(
        tmp_path: Path, darkraw_checkpoint: Path) -> None:
    checkpoint = torch.load(darkraw_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["net"]["rdb"] = "sideways"
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(DataError, match=r"edited\.ckpt is a darkraw checkpoint that does not fit.*"
                                        "model.rdb='sideways'"):
        load_network(edited, torch.device("cpu"))


def test_a_checkpoint_whose_weights_do_not_fit_names_the_keys(tmp_path: Path,
                                                               darkraw_checkpoint: Path) -> None:
    """load_state_dict's first line is only "Error(s) in loading state_dict for ...": the
    message must name what does not fit."""
    checkpoint = torch.load(darkraw_checkpoint, weights_only=True)
    state = checkpoint["state_dict"]
    state["net.low.bias"] = torch.zeros(5)
    del state["net.fuse2.bias"], state["net.high.squeeze.bias"]
    state["net.extra.weight"] = torch.zeros(2)
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(DataError) as caught:
        load_network(edited, torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message and "Error(s) in loading" not in message
    assert message.startswith(f"ckpt={edited} is a darkraw checkpoint that does not fit this "
                              "version's network (weights ")
    assert ("2 missing: net.high.squeeze.bias, net.fuse2.bias; 1 unexpected: net.extra.weight; "
            "1 of another shape: net.low.bias (5 in the file, 12 expected)") in message


def test_a_checkpoint_with_nan_or_inf_weights_is_refused_naming_them(
        tmp_path: Path, darkraw_checkpoint: Path) -> None:
    """Its network wrote all-black images and scored n/a with exit status 0, and the ONNX check
    blamed the exporter: the checkpoint is refused where it is read."""
    checkpoint = torch.load(darkraw_checkpoint, weights_only=True)
    checkpoint["state_dict"]["net.low.bias"][3] = float("nan")
    checkpoint["state_dict"]["net.fuse2.parametrizations.weight.original1"].view(-1)[0] = (
        float("inf"))
    edited = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(DataError) as caught:
        load_inference_network(edited, torch.device("cpu"))
    assert str(caught.value).startswith(
        f"ckpt={edited} holds NaN or inf in 2 weight tensor(s) (net.low.bias, "
        "net.fuse2.parametrizations.weight.original1): its network cannot restore anything")
    assert "best-*.ckpt" in str(caught.value)


def test_many_missing_keys_are_counted_and_the_first_few_named(tmp_path: Path,
                                                               darkraw_checkpoint: Path) -> None:
    checkpoint = torch.load(darkraw_checkpoint, weights_only=True)
    keys = list(checkpoint["state_dict"])
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                if not k.startswith("net.high.")}
    edited = tmp_path / "half.ckpt"
    torch.save(checkpoint, edited)
    missing = [k for k in keys if k.startswith("net.high.")]
    listed = f"{missing[0]}, {missing[1]}, {missing[2]} and {len(missing) - 3} more"
    with pytest.raises(DataError, match=rf"\(weights {len(missing)} missing: {listed}\)"):
        load_network(edited, torch.device("cpu"))


@pytest.mark.parametrize("layout", ["bare", "module_state", "module_net_state",
                                    "net_prefix_under_state_dict"])
def test_a_bare_state_dict_of_the_network_is_named_and_the_fix_works(tmp_path: Path,
                                                                     layout: str) -> None:
    """``torch.save(net.state_dict())``: the weights without the hyper-parameters. The message
    says what the file is and gives a command; that command, run as printed, makes a checkpoint
    that loads to the same network."""
    net = perturbed_net()
    state = net.state_dict()
    payload = {"bare": state,
               "module_state": {f"module.{k}": v for k, v in state.items()},
               "module_net_state": {f"module.net.{k}": v for k, v in state.items()},
               "net_prefix_under_state_dict": {"state_dict": {f"net.{k}": v
                                                              for k, v in state.items()},
                                               "epoch": 3}}[layout]
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    with pytest.raises(DataError) as caught:
        load_network(path, torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith(f"ckpt={path} holds only the weights of darkraw's network")
    assert "\n" not in message and "its keys" not in message
    command = re.search(r"`(python -c .*)`", message)
    assert command is not None, message
    out = tmp_path / "weights-darkraw.ckpt"
    assert message.endswith(f"and pass ckpt={out}")
    argv = shlex.split(command.group(1))
    subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, check=True, timeout=300)
    x = torch.rand(1, 4, 32, 48, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        assert torch.equal(load_network(out, torch.device("cpu"))(x), net(x))


def test_a_state_dict_of_another_network_is_not_taken_for_darkraws(tmp_path: Path) -> None:
    state = perturbed_net().state_dict()
    state["low.bias"] = torch.zeros(5)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(DataError, match=r"is not a darkraw checkpoint \(its keys: "):
        load_network(path, torch.device("cpu"))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_an_unavailable_device_is_one_config_error_naming_what_there_is() -> None:
    """torch takes device=mps (or cuda:99, xpu) by name and fails at the first tensor moved
    there, with a traceback from inside eval.py or restore.py."""
    here = ("use device=auto, device=cpu, device=cuda or device=cuda:0" if torch.cuda.is_available()
            else "use device=auto or device=cpu")  # the first of any GPUs: enough to check
    with pytest.raises(ConfigError) as caught:
        pick_device("mps")
    message = str(caught.value)
    assert message.startswith("device='mps' but Apple's MPS GPU is not available here")
    assert message.endswith("(what this machine has)") and "\n" not in message
    assert here.rsplit(" or ", 1)[0] in message
    for name, start in [("xpu", "device='xpu' is not supported"),
                        ("gpu", "device='gpu' is not a device"),
                        ("cuda:99", "device='cuda:99' but ")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(start)}.*: use device=auto"):
            pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")

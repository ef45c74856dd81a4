from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from darkraw.errors import DataError
from lightning_modules.module import RestorationModule
from lightning_modules.network import DarkRestorationNet
from lightning_modules.reference_import import (
    REFERENCE_TENSOR_COUNT,
    ReferenceCheckpointError,
    import_reference,
    load_reference_state_dict,
    main,
    read_reference_checkpoint,
    to_reference_state_dict,
)
from tests.helpers import perturbed_net

SPEC_TSV = Path(__file__).parents[1].parent / "shared/spec/reference_checkpoint_keys.tsv"



def packed(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand(1, 4, h, w) * 4


def spec_keys() -> list[tuple[str, str]]:
    if not SPEC_TSV.is_file():
        pytest.skip(f"{SPEC_TSV} is absent (CI keeps shared/ beside the repo)")
    rows = [line.split("\t") for line in SPEC_TSV.read_text().splitlines() if line.strip()]
    return [(name, shape) for name, shape in rows]


@pytest.fixture
def reference_file(tmp_path: Path) -> tuple[Path, DarkRestorationNet]:
    net = perturbed_net()
    path = tmp_path / "reference.pt"
    torch.save({"model": to_reference_state_dict(net)}, path)
    return path, net


# --- an independent forward pass over the reference tensor names, written from the spec -------
# The round trip alone cannot catch a mapping that swaps two convs of the same shape (it would be
# swapped back); this reads the reference names the way the authors' network uses them.


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    v, g = sd[f"{name}.weight_v"], sd[f"{name}.weight_g"]
    # g * v / ||v|| by the kernel behind torch.nn.utils.weight_norm, the authors' form.
    weight = torch._weight_norm(v, g, 0)
    groups = x.shape[1] // v.shape[1]
    return F.conv2d(x, weight, sd.get(f"{name}.bias"), padding=v.shape[-1] // 2, groups=groups)


def _rdb(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, layers: int) -> torch.Tensor:
    features = x
    for j in range(layers):
        if j == 0:
            new = _conv(sd, f"{prefix}.dense_layers.0.conv.0", features)
        else:
            slope = 1.0 if j == layers - 1 else 0.2
            new = _conv(sd, f"{prefix}.dense_layers.{j}.conv.1", F.leaky_relu(features, slope))
        features = torch.cat([features, new], dim=1)
    return _conv(sd, f"{prefix}.conv_1x1.0", features) + x


def reference_forward(sd: dict[str, torch.Tensor], mosaic: torch.Tensor) -> torch.Tensor:
    """The authors' network takes the full-resolution mosaic and packs it itself."""
    x = F.pixel_unshuffle(mosaic, 2)
    h0 = _conv(sd, "conv32x.1.0", _conv(sd, "conv32x.0.0", F.pixel_unshuffle(x, 16)))
    r1 = _rdb(sd, "RDB1", h0, 4)
    r2 = _rdb(sd, "RDB2", r1, 5)
    r3 = _rdb(sd, "RDB3", r2, 5)
    f = _conv(sd, "rdball.0", torch.cat([r1, r2, r3], dim=1)) + h0
    f = _conv(sd, "conv_rdb8x.0", F.pixel_shuffle(f, 4))
    z = F.pixel_unshuffle(x, 4)
    m = _conv(sd, "resblock8x.conv2.0", F.leaky_relu(_conv(sd, "resblock8x.conv1.0", z), 0.2)) + z
    c = torch.cat([m, f], dim=1)
    b, ch, h, w = c.shape
    c = c.view(b, 2, ch // 2, h, w).transpose(1, 2).reshape(b, ch, h, w)
    c = F.leaky_relu(_conv(sd, "conv32_8_cat.1.0", _conv(sd, "conv32_8_cat.0.0", c)), 0.2)
    y = torch.cat([_conv(sd, "conv2x.0", x), F.pixel_shuffle(c, 4)], dim=1)
    return F.pixel_shuffle(_conv(sd, "conv_2_8_32.0", y), 2).clamp(0, 1)


# --- tests ---------------------------------------------------------------------------------------


def test_export_has_exactly_the_reference_names_and_shapes() -> None:
    sd = to_reference_state_dict(perturbed_net())
    exported = [(k, "x".join(str(s) for s in v.shape)) for k, v in sd.items()]
    assert exported == spec_keys()  # names, shapes and order
    assert sum(v.numel() for v in sd.values()) == 784_768


def test_round_trip_through_a_reference_file(reference_file: tuple[Path, DarkRestorationNet]
                                             ) -> None:
    path, net = reference_file
    imported = import_reference(path).eval()
    assert imported.rdb == "before"
    x = packed(64, 96)
    with torch.no_grad():
        expected, y = net(x), imported(x)
    assert 0 < y.mean() < 1
    assert float((y - expected).abs().max()) < 1e-5
    exported = to_reference_state_dict(imported)
    original = to_reference_state_dict(net)
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_imported_net_computes_what_the_reference_names_mean(
    reference_file: tuple[Path, DarkRestorationNet],
) -> None:
    path, _ = reference_file
    sd = torch.load(path, weights_only=True)["model"]
    imported = import_reference(path).eval()
    mosaic = torch.rand(1, 1, 128, 192) * 4
    with torch.no_grad():
        ours = imported(F.pixel_unshuffle(mosaic, 2))
        theirs = reference_forward(sd, mosaic)
    assert float((ours - theirs).abs().max()) < 1e-5


def test_every_problem_is_listed_with_names_and_shapes() -> None:
    sd = to_reference_state_dict(perturbed_net())
    del sd["rdball.0.weight_g"], sd["RDB2.conv_1x1.0.weight_v"]
    sd["RDB1.dense_layers.1.conv.0.weight_v"] = torch.zeros(32, 96, 3, 3)
    sd["conv2x.0.bias"] = torch.zeros(13)
    sd["conv32x.0.0.weight_v"] = torch.zeros(128, 1024, 3, 3)
    net = DarkRestorationNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ReferenceCheckpointError) as info:
        load_reference_state_dict(net, sd, source="ref.pt")
    message = str(info.value)
    assert "ref.pt" in message
    assert "2 missing" in message and "rdball.0.weight_g (expected 64x1x1x1)" in message
    assert "RDB2.conv_1x1.0.weight_v (expected 64x224x1x1)" in message
    assert "1 unexpected" in message
    assert "RDB1.dense_layers.1.conv.0.weight_v (32x96x3x3)" in message
    assert "2 tensor(s) of the wrong shape" in message
    assert "conv2x.0.bias: 13 in the file, expected 12" in message
    assert "conv32x.0.0.weight_v: 128x1024x3x3 in the file, expected 128x8x3x3" in message
    # All or nothing: a failed import leaves the network as it was.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_non_tensor_values_are_reported() -> None:
    sd = dict(to_reference_state_dict(perturbed_net()))
    sd["low_bias_placeholder"] = 3
    sd["conv2x.0.bias"] = [0.0] * 12
    with pytest.raises(ReferenceCheckpointError, match=r"conv2x.0.bias: a list, expected") as info:
        load_reference_state_dict(DarkRestorationNet(), sd)
    assert "low_bias_placeholder (int)" in str(info.value)


def test_nan_or_inf_tensors_are_refused_by_name() -> None:
    """A converted checkpoint of such a file restored all-black images without a word."""
    sd = dict(to_reference_state_dict(perturbed_net()))
    sd["conv2x.0.bias"] = sd["conv2x.0.bias"].clone()
    sd["conv2x.0.bias"][0] = float("nan")
    sd["rdball.0.weight_g"] = torch.full_like(sd["rdball.0.weight_g"], float("-inf"))
    net = DarkRestorationNet()
    with pytest.raises(ReferenceCheckpointError) as info:
        load_reference_state_dict(net, sd, source="ref.pt")
    message = str(info.value)
    assert "2 tensor(s) of the wrong shape, type or values" in message
    assert "conv2x.0.bias: holds NaN or inf values" in message
    assert "rdball.0.weight_g: holds NaN or inf values" in message
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())  # nothing copied


def test_the_classic_rdb_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="rdb='before'"):
        to_reference_state_dict(DarkRestorationNet(rdb="after"))
    with pytest.raises(ValueError, match="rdb='after'"):
        load_reference_state_dict(DarkRestorationNet(rdb="after"), {})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({"weights": {}}, "no 'model' entry"),
        ({"state_dict": {}, "hyper_parameters": {}}, "a Lightning checkpoint of some other model"),
        ({"model": [1]}, "'model' holds a list"),
    ],
)
def test_files_of_the_wrong_form_are_refused(tmp_path: Path, payload: object, match: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ReferenceCheckpointError, match=match):
        read_reference_checkpoint(path)


def test_unreadable_and_absent_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(200)))
    with pytest.raises(ReferenceCheckpointError, match="garbage.pt (is not a PyTorch checkpoint|"
                                                       "could not be read)"):
        read_reference_checkpoint(garbage)
    notes = tmp_path / "notes.txt"  # torch.load raised KeyError on a text file: now explained
    notes.write_text("not a torch file")
    with pytest.raises(ReferenceCheckpointError,
                       match=r"notes.txt is a text file \(it starts with 'not a torch file'\), "
                             "not a PyTorch checkpoint: give the authors' published checkpoint"):
        read_reference_checkpoint(notes)
    # What a file host's download link saves when it answers with a page instead of the file.
    page = tmp_path / "model.pt"
    page.write_text("<!doctype html>\n<html><title>Sign in</title></html>")
    with pytest.raises(ReferenceCheckpointError,
                       match="model.pt is an HTML web page .*download the file again"):
        read_reference_checkpoint(page)
    with pytest.raises(DataError, match="absent.pt does not exist"):
        read_reference_checkpoint(tmp_path / "absent.pt")


def test_data_parallel_prefix_is_accepted(tmp_path: Path) -> None:
    net = perturbed_net()
    path = tmp_path / "dp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in to_reference_state_dict(net).items()}}, path)
    imported = import_reference(path)
    assert torch.equal(imported.low.bias, net.low.bias)


def test_cli_writes_a_checkpoint_lightning_loads(
    reference_file: tuple[Path, DarkRestorationNet], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, net = reference_file
    out = tmp_path / "ckpts" / "reference.ckpt"
    assert main([str(path), str(out)]) == 0
    assert "eval.py ckpt=" in capsys.readouterr().out
    module = RestorationModule.load_from_checkpoint(out, map_location="cpu")
    assert module.hparams["net"] == {"rdb": "before"}
    x = packed(32, 64)
    with torch.no_grad():
        assert float((module.net.eval()(x) - net(x)).abs().max()) < 1e-5
    checkpoint = torch.load(out, weights_only=True)
    assert len(checkpoint["darkraw"]["reference_sha256"]) == 64
    assert not list(out.parent.glob(".*partial"))

    from darkraw.checkpoints import load_network  # the loader eval.py and restore.py use

    assert torch.equal(load_network(out, torch.device("cpu")).low.bias, net.low.bias)


def test_cli_refuses_to_overwrite_and_reports_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"precious")
    assert main([str(tmp_path / "ref.pt"), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"precious"
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"conv2x.0.bias": torch.zeros(12)}}, bad)
    assert main([str(bad), str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert "62 missing tensor(s)" in err and out.read_bytes() == b"precious"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_cli_refuses_a_folder_as_out(
    reference_file: tuple[Path, DarkRestorationNet], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], force: list[str],
) -> None:
    """A folder was 'exists; pass --force', then with --force 'Is a directory' and a .partial."""
    path, _ = reference_file
    folder = tmp_path / "imp" / "out.ckpt"
    folder.mkdir(parents=True)
    assert main([str(path), str(folder), *force]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"darkraw: error: {folder} is a folder: name the checkpoint file to write "
                    f"inside it, e.g. {folder / 'reference.ckpt'}")
    assert folder.is_dir() and not list(folder.iterdir())
    assert sorted(p.name for p in folder.parent.iterdir()) == ["out.ckpt"]  # no .partial


def test_a_failed_write_or_rename_leaves_no_partial_file(tmp_path: Path) -> None:
    from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint

    taken = tmp_path / "taken.ckpt"  # the final os.replace fails: a folder holds the name
    taken.mkdir()
    with pytest.raises(IsADirectoryError):
        save_checkpoint(lightning_checkpoint(perturbed_net()), taken)
    unpicklable = {"state_dict": {"w": torch.zeros(1000)}, "rows": (i for i in range(3))}
    with pytest.raises(TypeError, match="cannot pickle"):  # the write itself fails half way
        save_checkpoint(unpicklable, tmp_path / "half.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.ckpt"]
    assert not list(taken.iterdir())



def test_list_keys_prints_the_spec_key_list(capsys: pytest.CaptureFixture[str]) -> None:
    """The key list users can check a download against is the importer's own mapping."""
    assert main(["--list-keys"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == REFERENCE_TENSOR_COUNT
    if SPEC_TSV.is_file():
        spec = [line.split("\t")[:2] for line in SPEC_TSV.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        assert [row[:2] for row in rows] == spec


def test_a_darkraw_checkpoint_is_recognised_as_needing_no_import(tmp_path: Path) -> None:
    from lightning_modules.reference_import import lightning_checkpoint, save_checkpoint

    ours = save_checkpoint(lightning_checkpoint(perturbed_net()), tmp_path / "ours.ckpt")
    with pytest.raises(ReferenceCheckpointError, match="already a darkraw checkpoint"):
        read_reference_checkpoint(ours)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.w": torch.zeros(1)}}, other)
    with pytest.raises(ReferenceCheckpointError, match="some other model"):
        read_reference_checkpoint(other)

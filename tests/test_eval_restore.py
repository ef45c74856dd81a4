"""eval.py and restore.py end to end, on generated DNG files and a model whose output is known."""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage.metrics import structural_similarity

from datamodules.cache import MANIFEST_NAME
from datamodules.dng import write_bayer_dng
from datamodules.sid_lists import load_pairs
from lightning_modules.module import RestorationModule
from tests.helpers import (
    FIXTURE_SET,
    REPO,
    fixture_data_overrides,
    popen_ctrl_c_able,
    run_entry_point,
    write_dng_with_levels,
)

CONSTANT = 0.5


def save_checkpoint(module: RestorationModule, path: Path) -> Path:
    """The checkpoint layout Lightning writes, without a Trainer (what the importer writes too)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


@pytest.fixture(scope="module")
def constant_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A network whose output is exactly 0.5 everywhere: zero weights, last bias 0.5."""
    module = RestorationModule()
    with torch.no_grad():
        for name, param in module.net.named_parameters():
            if name.endswith("original0") or name.endswith("bias"):
                param.zero_()
        module.net.fuse2.bias.fill_(CONSTANT)
        assert torch.all(module.net(torch.rand(1, 4, 32, 32)) == CONSTANT)
    return save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "constant.ckpt")


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(RestorationModule(), tmp_path_factory.mktemp("ckpt") / "random.ckpt")


def expected_scores(target: torch.Tensor) -> tuple[float, float]:
    """PSNR of the constant prediction, in float and in the authors' uint8 convention."""
    psnr = -10 * math.log10(float(((target - CONSTANT) ** 2).mean()))
    t8 = (target * 255).round()
    p8 = round(CONSTANT * 255)  # torch rounds half to even: 127.5 -> 128
    psnr8 = 10 * math.log10(255**2 / float(((t8 - p8) ** 2).mean()))
    return psnr, psnr8


@pytest.mark.slow
def test_eval_writes_correct_per_image_metrics(synthetic_sid: Path, constant_checkpoint: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "eval"
    overrides = [*fixture_data_overrides(synthetic_sid, tmp_path / "cache"),
                 "data.num_workers=0", "data.persistent_workers=false",
                 f"paths.root_dir={tmp_path}", f"ckpt={constant_checkpoint}", "split=val",
                 f"output={out}", "data.progress=false"]
    proc = run_entry_point("eval.py", *overrides)
    assert "amplified otherwise" not in proc.stdout + proc.stderr  # no training settings stored
    # Only the scored split was cached: a first evaluation does not decode the training set.
    val_pairs = load_pairs(synthetic_sid, "lists")["val"]
    cached = json.loads((tmp_path / "cache" / MANIFEST_NAME).read_text())["entries"]
    assert sorted(cached) == sorted({relpath for pair in val_pairs
                                     for relpath in (pair.short_relpath, pair.long_relpath)})
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "summary.json").read_text())

    # The targets, read independently through the DataModule's validation split.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"),
                               version_base="1.3"):
        cfg = compose("eval", overrides=[o for o in overrides if o.startswith(("data.", "paths"))])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    targets = {str(b["name"][0]): b["target"] for b in datamodule.val_dataloader()}

    assert len(rows) == len(targets) == int(summary["images"]) > 0
    for row in rows:
        psnr, psnr8 = expected_scores(targets[row["name"]])
        assert float(row["psnr"]) == pytest.approx(psnr, abs=1e-3)
        assert float(row["psnr_uint8"]) == pytest.approx(psnr8, abs=1e-3)
        target = targets[row["name"]][0].permute(1, 2, 0).numpy()
        independent_ssim = structural_similarity(  # scikit-image, Gaussian window as the paper
            np.full_like(target, CONSTANT), target, data_range=1.0, channel_axis=2,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        # The two implementations differ at the image borders (up to ~0.02 on these 256 x 320
        # images); the pairing and scale are pinned down by the exact PSNR checks above.
        assert float(row["ssim"]) == pytest.approx(independent_ssim, abs=3e-2)
    assert summary["mean_psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    assert (out / "summary.md").is_file()
    assert len(list((out / "images").glob("*.png"))) == len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(101, 150), (64, 96), (250, 333)])
def test_restore_keeps_odd_sizes_and_writes_one_image_per_m(size: tuple[int, int],
                                                           random_checkpoint: Path,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mosaic = rng.integers(512, 900, size=size, dtype=np.uint16)
    raw_dir = tmp_path / "raw"
    write_bayer_dng(raw_dir / "dark.dng", mosaic, exposure_time=0.1)
    write_bayer_dng(raw_dir / "dark2.dng", mosaic[: size[0] - 1], exposure_time=0.1)
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw_dir}",
                           f"output={out}", "m=[1,8]", "tile_size=32", "tile_overlap=8")
    for stem, height in (("dark", size[0]), ("dark2", size[0] - 1)):
        for m in ("1", "8"):
            image = Image.open(out / f"{stem}_m{m}.png")
            assert image.size == (size[1], height)
            assert image.mode == "RGB"
    assert "amplification" in proc.stdout


def test_restore_rejects_missing_input_and_bad_checkpoint(tmp_path: Path,
                                                          random_checkpoint: Path) -> None:
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}",
                           f"input={tmp_path / 'nothing'}", f"output={tmp_path}", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.ckpt"
    torch.save({"model": {}}, bad)
    write_bayer_dng(tmp_path / "a.dng", np.full((64, 64), 600, np.uint16), exposure_time=0.1)
    proc = run_entry_point("restore.py", f"ckpt={bad}", f"input={tmp_path / 'a.dng'}",
                           f"output={tmp_path / 'o'}", check=False)
    assert proc.returncode == 1 and "reference_import" in proc.stderr


# A run folder as train.py names it, by its overrides: '=' and ',' that Hydra's override grammar
# rejects in an unquoted value.
RUN_FOLDER = "trainer.max_steps=80,trainer.val_check_interval=20"


def copy_into_run_folder(checkpoint: Path, root: Path) -> Path:
    target = root / "runs" / RUN_FOLDER / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)
    return target


def write_dark_dngs(folder: Path, names: tuple[str, ...] = ("dark", "dark2")) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [folder / f"{name}.dng" for name in names]
    for path in paths:
        write_bayer_dng(path, rng.integers(512, 900, size=(64, 96), dtype=np.uint16),
                        exposure_time=0.1)
    return paths


@pytest.mark.slow
def test_eval_takes_an_unquoted_checkpoint_path_of_a_run_folder(
        synthetic_sid: Path, constant_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_into_run_folder(constant_checkpoint, tmp_path)
    cache = tmp_path / "cache=a,b"
    run_entry_point("eval.py", *fixture_data_overrides(synthetic_sid, cache), "data.num_workers=0",
                    "data.persistent_workers=false", "data.progress=false",
                    f"paths.root_dir={tmp_path}", f"ckpt={ckpt}", "split=val", "max_images=1",
                    cwd=tmp_path)
    # No output=: the reports go into the run folder, one folder per checkpoint and split.
    summary = json.loads((ckpt.parents[1] / "eval" / "last-val" / "summary.json").read_text())
    assert summary["ckpt"] == str(ckpt) and summary["images"] == 1
    assert cache.is_dir()


def test_restore_takes_unquoted_paths_with_quotes_spaces_and_run_folder_names(
        random_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_into_run_folder(random_checkpoint, tmp_path)
    [raw] = write_dark_dngs(tmp_path / "in=raw,1", ("it's a dark",))
    out = tmp_path / "out=put,1"
    proc = run_entry_point("restore.py", f"ckpt={ckpt}", f"input={raw}",
                           f"output='{out}'",  # quoted by the user: left as it is
                           "tile_size=32", "tile_overlap=8", cwd=tmp_path)
    # Only the image goes into the output folder: no restore.log, no .hydra.
    assert sorted(p.name for p in out.iterdir()) == ["it's a dark_m5.png"]
    assert str(out / "it's a dark_m5.png") in proc.stdout
    assert not list(tmp_path.rglob("*.log"))


@pytest.mark.parametrize("script", ["eval.py", "restore.py"])
def test_missing_checkpoint_is_one_line_saying_how_to_pass_it(script: str,
                                                              tmp_path: Path) -> None:
    others = {"eval.py": [f"paths.root_dir={tmp_path}"],
              "restore.py": ["input=photos", f"output={tmp_path / 'o'}"]}[script]
    proc = run_entry_point(script, *others, check=False, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "darkraw: error: ckpt is not set: pass it on the command line, e.g. "
        "ckpt=outputs/<experiment>/runs/<run>/checkpoints/best-....ckpt (or last.ckpt)"
    ]
    assert list(tmp_path.rglob("*")) == []  # no log file, no folder left behind


def test_restore_missing_input_says_how_to_pass_it(random_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "darkraw: error: input is not set" in proc.stderr and "input=photos/" in proc.stderr


@pytest.mark.parametrize(("setting", "message"), [
    (["tile_size=32", "tile_overlap=16"], "tile_overlap=16 must be in [0, tile_size / 2)"),
    (["tile_size=50"], "tile_size=50 must be a positive multiple of 16"),
    (["amplification=500.0"], "amplification=500 is outside [1, 300]"),
    (["amplification=bright"], "amplification='bright' is not allowed"),
    (["m=[1,0]"], "m=0 is not allowed"),
    (["format=bmp"], "format='bmp' is not allowed"),
    (["orientation=upright"], "orientation='upright' is not allowed: choose one of ['as_shot', "
                              "'sensor']"),
    # Path("") is the current folder: it would have restored (or written into) the cwd.
    (["input="], "input= is empty: give input=photos/"),
    (["output="], "output= is empty: give output=restored/"),
])
def test_restore_checks_every_setting_before_any_work(setting: list[str], message: str,
                                                      random_checkpoint: Path,
                                                      tmp_path: Path) -> None:
    """Two input files, so a started progress bar would show ("restoring ... 0%")."""
    write_dark_dngs(tmp_path / "raw")
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={tmp_path / 'raw'}",
                           f"output={out}", *setting, check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"darkraw: error: {message}" in proc.stderr
    assert "restoring" not in proc.stdout + proc.stderr
    assert not out.exists()  # no images, no empty folder, no empty restore.log
    assert not list(tmp_path.rglob("*.log"))


@pytest.mark.slow
def test_restore_defaults_to_the_m_the_network_was_trained_at(tmp_path: Path) -> None:
    """A network trained at data.m=3 gives its best-exposed images at m=3, not at 5."""
    module = RestorationModule()
    path = save_checkpoint(module, tmp_path / "m3.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["datamodule_hyper_parameters"] = {"root": "/data/SID", "amplification": "estimated",
                                              "m": 3.0}
    torch.save(payload, path)
    write_bayer_dng(tmp_path / "raw" / "dark.dng",
                    np.random.default_rng(0).integers(512, 900, (64, 96), dtype=np.uint16),
                    exposure_time=0.1)
    common = [f"ckpt={path}", f"input={tmp_path / 'raw'}", "tile_size=32", "tile_overlap=8"]
    proc = run_entry_point("restore.py", *common, f"output={tmp_path / 'a'}", cwd=tmp_path)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["dark_m3.png"]
    assert "darkraw: m=3 (m=trained: the checkpoint's data.m=3)" in proc.stderr

    # Other knobs are the user's choice, said once to differ from training.
    proc = run_entry_point("restore.py", *common, f"output={tmp_path / 'b'}", "m=[1,5]",
                           cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["dark_m1.png", "dark_m5.png"]
    assert proc.stderr.count("darkraw: note: m=[1, 5] gives other brightness than the "
                             "network was trained at: m=3 (the checkpoint's data.m=3)") == 1


def test_restore_with_a_fixed_amplification_writes_one_image_per_file_named_by_it(
        random_checkpoint: Path, tmp_path: Path) -> None:
    write_dark_dngs(tmp_path / "raw")
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={tmp_path / 'raw'}",
                           f"output={out}", "amplification=100", "m=[1,5]", "tile_size=32",
                           "tile_overlap=8", cwd=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["dark2_x100.png", "dark_x100.png"]
    assert proc.stdout.count("(amplification x100.0)") == 2
    assert proc.stderr.count("is ignored") == 1  # once per run, not per file
    assert "m=[1.0, 5.0] is ignored with a fixed amplification=100" in proc.stderr

    # m left at its default: nothing to warn about; a fractional gain keeps one dot in the name.
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}",
                           f"input={tmp_path / 'raw' / 'dark.dng'}", f"output={out / 'b'}",
                           "amplification=2.5", "tile_size=32", "tile_overlap=8", cwd=tmp_path)
    assert [p.name for p in (out / "b").iterdir()] == ["dark_x2p5.png"]
    assert "ignored" not in proc.stderr


def test_restore_skips_a_bad_file_of_a_folder_and_fails_at_the_end_naming_it(
        random_checkpoint: Path, tmp_path: Path) -> None:
    """A PNG under a raw name, and a raw whose white level is not above its black level (a
    traceback that ended the whole run), between two raws: each warned about and skipped, the
    others restored and listed; the run then ends with one error line. The same file alone is
    its own error."""
    raw = tmp_path / "raw"
    write_dark_dngs(raw, ("a", "c"))
    Image.new("RGB", (32, 32)).save(raw / "b.dng", format="PNG")
    write_dng_with_levels(raw / "d.dng", np.full((64, 96), 600), black_level=600, white_level=600)
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw}",
                           f"output={out}", "tile_size=32", "tile_overlap=8", check=False,
                           cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_m5.png", "c_m5.png"]
    assert [line.split("  (amplification x")[0] for line in proc.stdout.splitlines()] == [
        str(out / "a_m5.png"), str(out / "c_m5.png")]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("darkraw: warning: tile_size=32 with tile_overlap=8 leaves "
                               "visible seams")  # these tiny tiles only keep the test fast
    assert lines[1].startswith(f"darkraw: warning: skipped {raw / 'b.dng'}: cannot decode")
    assert lines[2] == (f"darkraw: warning: skipped {raw / 'd.dng'}: {raw / 'd.dng'} gives white "
                        "level 600 and black levels 600, 600, 600, 600: the white level must be "
                        "above them (a damaged file, or levels LibRaw reads wrong for this "
                        "camera), so its values cannot be scaled to the network's [0, 1] input")
    assert lines[-1].startswith("darkraw: error: 2 of 4 files could not be restored: b.dng "
                                "(cannot decode b.dng: LibRaw does not recognise it")
    assert "d.dng (d.dng gives white level 600" in lines[-1]

    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw / 'b.dng'}",
                           f"output={out}", check=False, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"darkraw: error: cannot decode {raw / 'b.dng'}: LibRaw")


def test_ctrl_c_of_restore_says_what_was_written_and_leaves_only_whole_images(
        random_checkpoint: Path, tmp_path: Path) -> None:
    """Ctrl-C printed a KeyboardInterrupt traceback of some 40 lines; now one line and exit
    130. Images are renamed into place when complete, so nothing half-written is left."""
    raw = tmp_path / "raw"
    for index in range(8):
        write_bayer_dng(raw / f"dark{index}.dng", np.random.default_rng(index).integers(
            512, 900, (512, 768), dtype=np.uint16), exposure_time=0.1)
    out = tmp_path / "restored"
    process = popen_ctrl_c_able(
        [sys.executable, str(REPO / "restore.py"), f"ckpt={random_checkpoint}", f"input={raw}",
         f"output={out}", "tile_size=32", "tile_overlap=8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    first = process.stdout.readline()  # the first image is on disk: restoring is under way
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=120)
    listed = [line.split("  (amplification x")[0] for line in (first + rest).splitlines()]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"darkraw: interrupted (Ctrl-C): {len(listed)} image(s) written into {out} (listed "
        "above), each complete; the file being restored has none")
    assert 1 <= len(listed) < 8
    assert sorted(str(p) for p in out.iterdir()) == sorted(listed)  # no partial file at all
    for image in listed:
        assert Image.open(image).size == (768, 512)


def test_restore_shows_progress_over_tiles_on_stderr_and_lists_only_images_on_stdout(
        random_checkpoint: Path, tmp_path: Path) -> None:
    """One file, as on a terminal (rich's TTY_COMPATIBLE): the bar counts its tiles."""
    [raw] = write_dark_dngs(tmp_path / "raw", ("dark",))
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw}",
                           f"output={out}", "m=[1,5]", "tile_size=32", "tile_overlap=8",
                           cwd=tmp_path, TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    assert "restoring dark.dng (2 image(s) x 2 tile(s))" in proc.stderr
    assert "4/4" in proc.stderr
    assert [line.split("  (amplification x")[0] for line in proc.stdout.splitlines()] == [
        str(out / "dark_m1.png"), str(out / "dark_m5.png")]


def test_restore_checks_the_output_folder_before_restoring(random_checkpoint: Path,
                                                           tmp_path: Path) -> None:
    [raw] = write_dark_dngs(tmp_path / "raw", ("dark",))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw}",
                           f"output={a_file / 'sub'}", check=False, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"darkraw: error: output={a_file / 'sub'} cannot be created or written (Not a "
        "directory): give a folder you can write to"]


def test_restore_help_explains_its_own_keys_not_train_groups() -> None:
    proc = run_entry_point("restore.py", "--help")
    assert "python restore.py ckpt=<checkpoint> input=<raw file or folder>" in proc.stdout
    for key in ("ckpt", "input", "output", "m", "amplification", "format", "orientation",
                "tile_size", "tile_overlap", "device", "precision"):
        assert f"\n  {key}=" in proc.stdout, key
    assert "(default: 1024)" in proc.stdout and "Example:" in proc.stdout
    assert "experiment" not in proc.stdout and "trainer" not in proc.stdout


def test_eval_warns_when_its_amplification_differs_from_training(
        synthetic_sid: Path, constant_checkpoint: Path, tmp_path: Path) -> None:
    from darkraw.evaluation import (
        amplification_mismatches,
        pairs_mismatch,
        read_checkpoint_record,
    )

    def training_data_mismatches(path: Path, data: dict[str, object]) -> list[str]:
        return amplification_mismatches(read_checkpoint_record(path).trained_data, data)

    checkpoint = torch.load(constant_checkpoint, map_location="cpu", weights_only=False)
    trained = {"amplification": "exposure_ratio", "m": 5.0, "max_ratio": 300.0,
               "pairs": "authors"}
    ckpt = tmp_path / "ratio.ckpt"
    torch.save({**checkpoint, "datamodule_hyper_parameters": trained}, ckpt)
    assert training_data_mismatches(ckpt, {**trained, "m": 1.0}) == []  # m: estimated only
    assert training_data_mismatches(ckpt, {**trained, "max_ratio": 100.0}) == [
        "data.max_ratio=100.0 (trained with 300.0)"]
    assert training_data_mismatches(constant_checkpoint, {"amplification": "estimated"}) == []
    # max_ratio clamps the estimated amplifier too: scoring at 100 moved PSNR without a word.
    estimated = {"amplification": "estimated", "m": 5.0, "max_ratio": 300.0}
    assert amplification_mismatches(estimated, {**estimated, "max_ratio": 100.0}) == [
        "data.max_ratio=100.0 (trained with 300.0)"]
    # experiment=paper trains on the authors' pairs; eval.py's default lists scores others.
    assert pairs_mismatch(trained, {"pairs": "authors"}, "test") is None
    assert pairs_mismatch(trained, {"pairs": "lists"}, "test").startswith(
        "evaluating the test split with data.pairs=lists but the checkpoint was trained with "
        "data.pairs=authors")

    proc = run_entry_point(
        "eval.py", *fixture_data_overrides(synthetic_sid, tmp_path / "cache"),
        "data.num_workers=0", "data.persistent_workers=false", "data.progress=false",
        f"paths.root_dir={tmp_path}", f"ckpt={ckpt}", "split=val", "max_images=1",
        "save_images=false", f"output={tmp_path / 'eval'}")
    assert ("evaluating with data.amplification='estimated' (trained with 'exposure_ratio')"
            in proc.stdout + proc.stderr)
    assert ("evaluating the val split with data.pairs=lists but the checkpoint was trained with "
            "data.pairs=authors" in proc.stdout + proc.stderr)
    assert (tmp_path / "eval" / "summary.json").is_file()  # a warning, not a refusal


def test_eval_reads_the_machines_local_config_as_training_does(constant_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    """conf/local/default.yaml's paths were ignored by eval.py, whose error then advised
    setting them there. (Given through --config-dir here, not written into the repository.)"""
    local = tmp_path / "conf" / "local" / "default.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(f"# @package _global_\npaths: {{sid_root: {tmp_path / 'my_sid'}}}\n")
    proc = run_entry_point("eval.py", "--config-dir", str(tmp_path / "conf"),
                           f"ckpt={constant_checkpoint}", "data=sid", check=False, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"SID dataset root {tmp_path / 'my_sid'} does not exist" in proc.stderr
    local.write_text("paths: {sid_root: /elsewhere}\n")  # without the package line
    proc = run_entry_point("eval.py", "--config-dir", str(tmp_path / "conf"),
                           f"ckpt={constant_checkpoint}", "data=sid", check=False, cwd=tmp_path)
    assert "conf/local/default.yaml must start with the line '# @package _global_'" in proc.stderr


def test_eval_never_replaces_the_synthetic_set_it_would_score_otherwise(
        synthetic_sid: Path, constant_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint trained on a set made with other settings than eval's defaults: eval.py
    used to regenerate that set (the training data was gone, and other images were scored)."""
    overrides = [o.replace("num_val_scenes=1", "num_val_scenes=2")
                 for o in fixture_data_overrides(synthetic_sid, tmp_path / "cache")]
    overrides += ["data.progress=false", f"ckpt={constant_checkpoint}",
                  f"output={tmp_path / 'eval'}"]
    assert "data.synthetic.num_val_scenes=2" in overrides
    marker = (synthetic_sid / ".darkraw_synthetic.json").read_bytes()
    proc = run_entry_point("eval.py", *overrides, check=False)
    assert proc.returncode != 0
    assert (f"darkraw: error: data.root={synthetic_sid} holds the synthetic set generated with "
            "other settings than data.synthetic.num_val_scenes=2; it is not replaced here: pass "
            f"data.synthetic.num_val_scenes={FIXTURE_SET['num_val_scenes']} to score that set"
            in proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert (synthetic_sid / ".darkraw_synthetic.json").read_bytes() == marker
    assert not (tmp_path / "eval").exists()


def test_restore_keeps_the_images_of_files_sharing_a_name_and_names_what_it_skips(
        random_checkpoint: Path, tmp_path: Path) -> None:
    """IMG_0001.CR2 and the IMG_0001.DNG made from it both wrote IMG_0001_m5.png, the second
    replacing the first; a folder named x.dng was "raw file not found ... check the dataset
    root", a macOS ._x.dng was told to be downloaded again, a .txt passed over unsaid."""
    raw = tmp_path / "raw"
    write_dark_dngs(raw, ("IMG_0001", "other"))
    (raw / "IMG_0001.dng").rename(raw / "IMG_0001.CR2")  # LibRaw reads by content, not name
    write_dark_dngs(raw, ("IMG_0001",))
    (raw / "sub.dng").mkdir()
    (raw / "._IMG_0001.dng").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))
    (raw / "notes.txt").write_text("shot at dusk")
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw}",
                           f"output={out}", "m=[1,5]", "tile_size=32", "tile_overlap=8",
                           cwd=tmp_path)
    names = ["IMG_0001_CR2_m1.png", "IMG_0001_CR2_m5.png", "IMG_0001_dng_m1.png",
             "IMG_0001_dng_m5.png", "other_m1.png", "other_m5.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert sorted(line.split("  (amplification x")[0] for line in proc.stdout.splitlines()) == [
        str(out / name) for name in names]
    assert (f"darkraw: warning: input={raw}: skipped 3 entries: 1 not a raw file by its "
            "extension: notes.txt; 1 folder or other non-file (sub-folders are not searched): "
            "sub.dng; 1 macOS metadata file (._*): ._IMG_0001.dng") in proc.stderr
    assert ("darkraw: warning: 2 files share their name with another file (IMG_0001.CR2, "
            "IMG_0001.dng): their images carry the extension too, e.g. IMG_0001_CR2_m1.png"
            in proc.stderr)
    assert "not found" not in proc.stderr and "download" not in proc.stderr
    assert "darkraw: restored 3 file(s)" in proc.stderr


def test_restore_refuses_names_that_collide_even_with_their_extension_before_any_work(
        random_checkpoint: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_dark_dngs(raw, ("a", "a_NEF"))
    (raw / "a.dng").rename(raw / "a.NEF")
    write_dark_dngs(raw, ("a",))
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={raw}",
                           f"output={out}", check=False, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"darkraw: error: a.NEF and a_NEF.dng in {raw} would write images of the same name "
        "(a_NEF_...): rename one of them, or restore them into separate output folders")
    assert not out.exists()


@pytest.mark.parametrize(("setting", "message"), [
    ("m=nan", "m=nan is not allowed: each m must be a finite positive number"),
    ("m=[5,inf]", "m=inf is not allowed: each m must be a finite positive number"),
    ("m=[1,1.0]", "m=[1, 1.0] gives m=1 and m=1.0 the same image name (<file>_m1.<format>), so "
                  "one would replace the other: give each value once (names keep 6 significant "
                  "digits)"),
])
def test_restore_refuses_m_values_that_give_no_image_or_one_image_twice(
        setting: str, message: str, random_checkpoint: Path, tmp_path: Path) -> None:
    write_dark_dngs(tmp_path / "raw", ("dark",))
    out = tmp_path / "restored"
    proc = run_entry_point("restore.py", f"ckpt={random_checkpoint}", f"input={tmp_path / 'raw'}",
                           f"output={out}", setting, check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"darkraw: error: {message}"]
    assert not out.exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
@pytest.mark.parametrize("script", ["eval.py", "restore.py"])
def test_an_unavailable_device_is_one_line_in_eval_and_restore(script: str,
                                                               random_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    """device=mps on a machine without it was a RuntimeError traceback from torch."""
    [raw] = write_dark_dngs(tmp_path / "raw", ("dark",))
    others = {"eval.py": [f"paths.root_dir={tmp_path}", f"output={tmp_path / 'eval'}"],
              "restore.py": [f"input={raw}", f"output={tmp_path / 'restored'}"]}[script]
    proc = run_entry_point(script, f"ckpt={random_checkpoint}", *others, "device=mps",
                           check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("darkraw: error: device='mps' but Apple's MPS GPU is not available "
                           "here")
    assert line.endswith("(what this machine has)") and "device=cpu" in line

"""eval.py's settings, output folders, summaries and warnings (tests/test_eval_restore.py holds
the end-to-end metric checks against a network whose output is known)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from darkraw.errors import ConfigError, DataError
from darkraw.evaluation import (
    DATA_CONFIGS,
    STD_LABEL,
    ImageScore,
    check_output,
    default_output,
    summarise_scores,
    training_dataset_mismatch,
    write_reports,
)
from datamodules.sid_datamodule import SIDDataModule, SyntheticSIDDataModule
from eval import check_no_train_only_overrides
from eval import run as run_eval
from lightning_modules.module import RestorationModule
from tests.helpers import FIXTURE_SET, REPO, fixture_data_overrides, run_entry_point
from tests.test_eval_restore import save_checkpoint

VAL_IMAGE, TEST_IMAGE = "20001_00_0.1s.png", "10001_00_0.1s.png"  # the fixture set's one each


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(RestorationModule(), tmp_path_factory.mktemp("ckpt") / "random.ckpt")


def trained_on(checkpoint: Path, path: Path, datamodule: SIDDataModule, step: int) -> Path:
    """``checkpoint`` as train.py would have saved it after ``step`` steps on ``datamodule``:
    Lightning stores the data module's hyper-parameters and the global step."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved.update(datamodule_hyper_parameters=dict(datamodule.hparams), global_step=step, epoch=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return path


def eval_config(*overrides: str) -> DictConfig:
    """conf/eval.yaml composed as eval.py composes it, for runs in this process."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def fixture_eval(synthetic_sid: Path, tmp_path: Path, *overrides: str) -> list[str]:
    """Overrides scoring the shared synthetic set with no loader processes."""
    return [*fixture_data_overrides(synthetic_sid, tmp_path / "cache"), "data.num_workers=0",
            "data.persistent_workers=false", "data.progress=false", f"paths.root_dir={tmp_path}",
            *overrides]


def score(name: str, psnr: float) -> ImageScore:
    return ImageScore(name, 100.0, psnr, 0.5, psnr + 0.1, 0.5, 10.0)


# --- settings ---------------------------------------------------------------------------------

def test_default_split_is_val() -> None:
    assert eval_config("ckpt=x.ckpt").split == "val"


@pytest.mark.parametrize(("setting", "message"), [
    ("max_images=0", "max_images=0 is not allowed: give a positive whole number"),
    ("max_images=-1", "max_images=-1 is not allowed"),
    ("max_images=abc", "max_images='abc' is not allowed"),
    ("max_images=1.5", "max_images=1.5 is not allowed"),
    ("max_images=true", "max_images=True is not allowed"),
    ("save_images=maybe", "save_images='maybe' is not allowed: use save_images=true or "
                          "save_images=false"),
    ("save_images=1", "save_images=1 is not allowed"),
])
def test_bad_settings_fail_before_the_checkpoint_or_data_is_read(setting: str, message: str,
                                                                  tmp_path: Path) -> None:
    """The checkpoint does not exist: these messages come before it is even looked for."""
    cfg = eval_config(f"ckpt={tmp_path / 'missing.ckpt'}", f"output={tmp_path / 'out'}", setting,
                      f"paths.root_dir={tmp_path}")
    with pytest.raises(ConfigError) as error:
        run_eval(cfg)
    assert str(error.value).startswith(message)
    assert list(tmp_path.iterdir()) == []  # no output folder, no data generated


def test_train_only_groups_are_refused_by_name_and_eval_settings_pass() -> None:
    for argument in ("experiment=paper", "+experiment=paper", "trainer.max_steps=4",
                     "model.rdb=after", "++callbacks=none", "logger=csv"):
        group = argument.lstrip("+").split("=")[0].split(".")[0]
        with pytest.raises(ConfigError, match=rf"^{argument.replace('+', '[+]')} is a train.py "
                                              rf"setting \(conf/{group}/\)"):
            check_no_train_only_overrides([argument])
    check_no_train_only_overrides(["ckpt=a=1,b/last.ckpt", "data=sid", "data.root=/d",
                                   "paths.root_dir=.", "hydra.run.dir=.", "split=test",
                                   "--cfg", "job"])


def test_data_configs_name_every_conf_data_option() -> None:
    """The warnings name a data= option by the data module a checkpoint was trained with."""
    options = {yaml.safe_load(path.read_text())["_target_"]: path.stem
               for path in (REPO / "conf" / "data").glob("*.yaml")}
    assert options == DATA_CONFIGS


# --- output folders ---------------------------------------------------------------------------

def test_default_output_is_one_folder_per_checkpoint_and_split(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a=1,b=2"
    assert default_output(run / "checkpoints" / "last.ckpt", "val") == run / "eval" / "last-val"
    assert (default_output(run / "checkpoints" / "best-step0000200-psnr21.32.ckpt", "test")
            == run / "eval" / "best-step0000200-psnr21.32-test")
    # Not in a checkpoints/ folder: beside the checkpoint, not in its grandparent.
    assert (default_output(tmp_path / "models" / "m.ckpt", "test")
            == tmp_path / "models" / "eval-m-test")


def test_output_that_cannot_be_a_folder_or_holds_foreign_reports_is_refused(
        tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match=f"^output={a_file} is a file, not a folder"):
        check_output(a_file, save_images=True)
    with pytest.raises(ConfigError, match=f"^output={a_file / 'out'} cannot be created: {a_file} "
                                          "is a file"):
        check_output(a_file / "out", save_images=True)

    # A run folder: training's images/ panels are not eval.py's to replace.
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "images" / "step000100.png").write_text("panel")
    with pytest.raises(ConfigError, match=r"already holds images/ with .png files that no "
                                          r"earlier eval.py run wrote .*or save_images=false$"):
        check_output(run, save_images=True)
    check_output(run, save_images=False)  # images/ left alone
    (run / "summary.md").write_text("my notes")
    with pytest.raises(ConfigError, match="already holds summary.md that no earlier eval.py"):
        check_output(run, save_images=False)
    with pytest.raises(ConfigError, match=r"holds summary.md, images/ with .png files that .*"
                                          r"output= folder$"):
        check_output(run, save_images=True)
    check_output(tmp_path / "new" / "folder", save_images=True)  # created later
    (tmp_path / "mine" / "images").mkdir(parents=True)
    (tmp_path / "mine" / "images" / "notes.txt").write_text("mine")
    check_output(tmp_path / "mine", save_images=True)  # nothing there that a .png could replace


@pytest.mark.slow
def test_each_checkpoint_and_split_has_its_folder_and_a_reevaluation_replaces_only_its_files(
        synthetic_sid: Path, checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = trained_on(checkpoint, run / "checkpoints" / "last.ckpt",
                      SyntheticSIDDataModule(root=str(synthetic_sid), cache_dir="c",
                                             synthetic=FIXTURE_SET), step=400)
    best = trained_on(checkpoint, run / "checkpoints" / "best-step0000200-psnr21.32.ckpt",
                      SyntheticSIDDataModule(root=str(synthetic_sid), cache_dir="c",
                                             synthetic=FIXTURE_SET), step=200)
    for ckpt in (last, best):
        run_eval(eval_config(*fixture_eval(synthetic_sid, tmp_path, f"ckpt={ckpt}")))
    for ckpt, step in ((last, 400), (best, 200)):
        folder = run / "eval" / f"{ckpt.stem}-val"
        summary = json.loads((folder / "summary.json").read_text())
        assert (summary["ckpt"], summary["checkpoint_step"]) == (str(ckpt), step)
        assert [p.name for p in (folder / "images").iterdir()] == [VAL_IMAGE]

    # A folder holding other files: a re-evaluation on the test split replaces the val one's
    # reports and image, and keeps everything else.
    out = tmp_path / "shared"
    run_eval(eval_config(*fixture_eval(synthetic_sid, tmp_path, f"ckpt={last}", f"output={out}")))
    (out / "notes.txt").write_text("mine")
    (out / "images" / "keep.txt").write_text("mine too")
    run_eval(eval_config(*fixture_eval(synthetic_sid, tmp_path, f"ckpt={last}", f"output={out}",
                                       "split=test")))
    assert sorted(p.name for p in (out / "images").iterdir()) == [TEST_IMAGE, "keep.txt"]
    with (out / "per_image.csv").open() as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == [TEST_IMAGE[:-4]]
    assert json.loads((out / "summary.json").read_text())["split"] == "test"
    assert "on the test split" in (out / "summary.md").read_text()

    # save_images=false: the previous restorations go too, none is left to be mistaken as new.
    run_eval(eval_config(*fixture_eval(synthetic_sid, tmp_path, f"ckpt={last}", f"output={out}",
                                       "save_images=false")))
    assert sorted(p.name for p in out.iterdir()) == ["images", "notes.txt", "per_image.csv",
                                                    "summary.json", "summary.md"]
    assert [p.name for p in (out / "images").iterdir()] == ["keep.txt"]
    assert json.loads((out / "summary.json").read_text())["images_folder"] is None

    # A re-evaluation that fails leaves the previous one as it was, and no staging folder.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError):
        run_eval(eval_config(f"ckpt={last}", f"output={out}", "data=sid",
                             f"data.root={tmp_path / 'no_sid_here'}", f"paths.root_dir={tmp_path}",
                             "data.num_workers=0", "data.progress=false"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (out / ".eval-partial").exists()


# --- summaries --------------------------------------------------------------------------------

def test_summary_uses_the_sample_std_says_so_and_writes_strict_json(tmp_path: Path) -> None:
    scores = [score("a", 20.0), score("b", 22.0), score("c", 27.0), score("d", math.inf)]
    summary = summarise_scores(scores)
    assert summary["images"] == 4
    assert summary["mean_psnr"] == pytest.approx(23.0)  # the identical image's inf left out
    assert summary["std_psnr"] == pytest.approx(statistics.stdev([20.0, 22.0, 27.0]))
    assert summary["std_psnr"] != pytest.approx(statistics.pstdev([20.0, 22.0, 27.0]))
    files = write_reports(scores, summary, tmp_path / "a", {"ckpt": "x.ckpt", "split": "val"})
    record = json.loads(files["summary_json"].read_text())
    assert record["std"] == STD_LABEL and "sample standard deviation" in STD_LABEL
    assert f"| PSNR (dB) | 23.000 ± {summary['std_psnr']:.3f} |" in files["summary_md"].read_text()

    # One image: no std, written as null (json.dumps would write NaN, which is not JSON).
    one = summarise_scores([score("a", 20.0)])
    files = write_reports([score("a", 20.0)], one, tmp_path / "b", {"ckpt": "x", "split": "val"})
    record = json.loads(files["summary_json"].read_text(), parse_constant=pytest.fail)
    assert record["std_psnr"] is None and record["mean_psnr"] == 20.0
    assert "| PSNR (dB) | 20.000 | 20.100 |" in files["summary_md"].read_text()


def test_dataset_mismatch_says_which_data_and_root_to_pass() -> None:
    sid = dict(SIDDataModule(root="/data/SID", cache_dir="/cache/sid").hparams)
    synthetic = dict(SyntheticSIDDataModule(root="/data/synthetic_sid", cache_dir="/c",
                                            synthetic=FIXTURE_SET).hparams)
    evaluating_synthetic = {"_target_": "datamodules.sid_datamodule.SyntheticSIDDataModule",
                            **synthetic}
    evaluating_sid = {"_target_": "datamodules.sid_datamodule.SIDDataModule", **sid}

    assert training_dataset_mismatch(sid, evaluating_synthetic) == (
        "evaluating on data=synthetic (data.root=/data/synthetic_sid) but the checkpoint was "
        "trained on data=sid (data.root=/data/SID): pass data=sid data.root=/data/SID to score it "
        "on the data set it was trained on")
    assert "pass data=synthetic data.root=/data/synthetic_sid" in training_dataset_mismatch(
        synthetic, evaluating_sid)
    assert training_dataset_mismatch(sid, {**evaluating_sid, "root": "/mnt/SID"}) == (
        "evaluating on data.root=/mnt/SID but the checkpoint was trained on data.root=/data/SID: "
        "pass data.root=/data/SID, unless that set has moved to /mnt/SID")
    bigger = {**evaluating_synthetic, "synthetic": {**FIXTURE_SET, "height": 512}}
    assert training_dataset_mismatch(synthetic, bigger).endswith(
        "data.synthetic.height=512 (trained with 256): not the synthetic set the checkpoint was "
        "trained on; pass data.synthetic.height=256 to score that one")
    assert training_dataset_mismatch(sid, evaluating_sid) is None
    assert training_dataset_mismatch(synthetic, evaluating_synthetic) is None
    assert training_dataset_mismatch({}, evaluating_synthetic) is None  # nothing stored


# --- the command line -------------------------------------------------------------------------

def test_help_lists_evals_settings_and_not_train_groups(tmp_path: Path) -> None:
    text = run_entry_point("eval.py", "--help", cwd=tmp_path).stdout
    for expected in ("Usage:\n  python eval.py ckpt=<checkpoint> [split=val|test]", "ckpt=<file>",
                     "split=val|test", "output=<folder>", "save_images=true|false",
                     "max_images=<N>|null", "device=auto|cpu|cuda|cuda:N", "data=synthetic",
                     "data=sid", "Example:\n  python eval.py ckpt=", "split: val"):
        assert expected in text, expected
    for train_only in ("experiment", "trainer", "callbacks", "logger", "optimizer"):
        assert train_only not in text, train_only

    proc = run_entry_point("eval.py", "ckpt=x.ckpt", "experiment=paper", cwd=tmp_path,
                           check=False)
    assert proc.returncode == 1 and "+experiment" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "darkraw: error: experiment=paper is a train.py setting (conf/experiment/): eval.py "
        "rebuilds the network from ckpt= and takes ckpt, split, output, save_images, max_images, "
        "device, data= and data.*/paths.* settings (python eval.py --help)"]


@pytest.mark.parametrize(("setting", "message"), [
    ("output={file}", "output={file} is a file, not a folder"),
    ("output={file}/eval", "output={file}/eval cannot be created: {file} is a file"),
    ("max_images=abc", "max_images='abc' is not allowed"),  # was a TypeError traceback
])
def test_bad_output_or_setting_is_one_line_before_any_work(setting: str, message: str,
                                                           synthetic_sid: Path, checkpoint: Path,
                                                           tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("mine")
    proc = run_entry_point("eval.py", *fixture_eval(synthetic_sid, tmp_path, f"ckpt={checkpoint}",
                                                    setting.format(file=file)),
                           cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"darkraw: error: {message.format(file=file)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no cache, no folder
    assert file.read_text() == "mine"


@pytest.mark.slow
def test_eval_warns_when_trained_on_another_data_set_and_records_what_was_scored(
        synthetic_sid: Path, checkpoint: Path, tmp_path: Path) -> None:
    """Trained with data=sid, evaluated without data=sid: scored on the synthetic set, but not
    silently. stdout holds the summary table alone; progress and messages go to stderr."""
    ckpt = trained_on(checkpoint, tmp_path / "models" / "sid.ckpt",
                      SIDDataModule(root="/data/SID", cache_dir="/data/cache/sid"), step=1200)
    proc = run_entry_point("eval.py", *fixture_eval(synthetic_sid, tmp_path, f"ckpt={ckpt}",
                                                    "max_images=1", "device=cpu"), cwd=tmp_path)
    assert (f"darkraw: warning: evaluating on data=synthetic (data.root={synthetic_sid}) but the "
            "checkpoint was trained on data=sid (data.root=/data/SID): pass data=sid "
            "data.root=/data/SID to score it on the data set it was trained on") in proc.stderr
    out = tmp_path / "models" / "eval-sid-val"
    assert proc.stderr.strip().splitlines()[-1] == (
        "darkraw: wrote per_image.csv, summary.json, summary.md, images/ (1 restored image) "
        f"into {out}")
    assert proc.stdout == (out / "summary.md").read_text()
    assert proc.stdout.startswith(f"# Evaluation of `{ckpt}` on the val split")
    assert "evaluating" in proc.stderr and "evaluating" not in proc.stdout  # the progress bar

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {
        "config": "synthetic", "_target_": "datamodules.sid_datamodule.SyntheticSIDDataModule",
        "root": str(synthetic_sid), "pairs": "lists", "amplification": "estimated", "m": 5.0,
        "max_ratio": 300.0, "full_image_eval": True,
        "synthetic": {**FIXTURE_SET, "ratios": [100, 250, 300]}}
    assert {key: summary[key] for key in ("ckpt", "split", "checkpoint_step", "max_images",
                                          "save_images", "device", "precision")} == {
        "ckpt": str(ckpt), "split": "val", "checkpoint_step": 1200, "max_images": 1,
        "save_images": True, "device": "cpu", "precision": "32"}
    assert summary["darkraw_version"] and summary["std"] == STD_LABEL
    assert "- checkpoint: `" in proc.stdout and ", step 1200" in proc.stdout

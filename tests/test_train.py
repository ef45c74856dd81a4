"""train.py end to end: real Hydra app, real Trainer, real generated DNG data, W&B offline."""

from __future__ import annotations

import csv
import fcntl
import json
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightning_modules.module import RestorationModule
from tests.helpers import (
    FAST_TRAIN,
    FIXTURE_SET,
    REPO,
    fixture_data_overrides,
    run_entry_point,
    subprocess_env,
)

pytestmark = pytest.mark.slow


def data_overrides(synthetic_sid: Path, tmp_path: Path) -> list[str]:
    return [*fixture_data_overrides(synthetic_sid, tmp_path / "cache"),
            f"paths.root_dir={tmp_path}"]


def only_run_dir(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "outputs" / "quickstart" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_default_run_writes_checkpoints_metrics_images_and_wandb(synthetic_sid: Path,
                                                                  tmp_path: Path) -> None:
    proc = run_entry_point("train.py", *FAST_TRAIN, "data.progress=false",
                           "data.cache_workers=1", *data_overrides(synthetic_sid, tmp_path))
    run_dir = only_run_dir(tmp_path)
    assert "preflight" not in run_dir.name  # override-named folder, noise keys excluded
    assert "progress" not in run_dir.name and "workers" not in run_dir.name
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    restored = RestorationModule.load_from_checkpoint(last, map_location="cpu")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    assert restored.hparams["net"]["rdb"] == "before"

    with (run_dir / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value}
    for key in ("train/loss", "train/l1", "train/ms_ssim", "train/psnr", "val/psnr", "val/ssim",
                "val/psnr_input", "lr-Adam", "perf/iters_per_sec"):
        assert key in logged, key
    assert sorted(p.name for p in (run_dir / "images").glob("*.png")) == [
        "val_step0000002.png", "val_step0000004.png"]
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000

    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    assert list(wandb_runs[0].glob("run-*.wandb"))
    # wandb 0.31 keeps an offline run's config only in its .wandb log: read it with W&B's tool.
    inspect = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--summary", "--json",
         str(wandb_runs[0])], capture_output=True, text=True, timeout=120, check=True,
    )
    record = json.loads(inspect.stdout)
    assert record["config"]["model"]["rdb"] == "before"  # nested, so W&B can group by it
    # Each validation's image panel sits at the step of its metrics on W&B's step axis.
    records = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json",
         str(wandb_runs[0])], capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()
    history = [json.loads(line)["history"]["item"] for line in records
               if json.loads(line).get("type") == "history"]
    panel_steps = [item["trainer/global_step"] for item in history if "val/panel.count" in item]
    val_steps = [item["trainer/global_step"] for item in history if "val/psnr" in item]
    assert panel_steps == val_steps and len(val_steps) == 2, history
    assert record["config"]["loss"]["ms_ssim_weight"] == 0.2
    assert record["project"] == "darkraw" and "quickstart" in record["tags"]
    # The run tells the user where everything is, and Lightning's messages come once, not twice.
    assert str(last) in proc.stderr and "wandb sync" in proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("Seed set to") == 1
    assert "Tip: For seamless" not in output and "LeafSpec" not in output  # library noise
    assert "anonymous setting has no effect" not in output
    # The model summary counts the FLOPs of one 192 x 192 patch (not "Total FLOPs: 0"): torch's
    # FlopCounterMode, which Lightning uses, gives 362 M; ptflops' aten backend 363 M.
    flops = re.search(r"Total FLOPs: ([0-9.]+) M", proc.stdout)
    assert flops and 355 <= float(flops.group(1)) <= 365, proc.stdout[-2000:]


def test_bf16_mixed_precision_trains_end_to_end(synthetic_sid: Path, tmp_path: Path) -> None:
    """What the GPU check runs, on the CPU: autocast reaches the loss, metrics, image panels and
    health statistics (bf16 tensors there would break numpy and the panels); checkpoints keep
    float32 weights, and every logged value is finite."""
    run_entry_point("train.py", *FAST_TRAIN, "trainer.precision=bf16-mixed", "logger=csv",
                    *data_overrides(synthetic_sid, tmp_path))
    run_dir = only_run_dir(tmp_path)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    assert state["global_step"] == 4
    assert {t.dtype for t in state["state_dict"].values()} == {torch.float32}
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    values = {key: float(v) for row in rows for key, v in row.items() if v and key != "step"}
    for key in ("train/loss", "train/psnr", "val/psnr", "val/ssim", "health/grad_norm"):
        assert key in values and torch.isfinite(torch.tensor(values[key])), key
    assert len(list((run_dir / "images").glob("val_step*.png"))) == 2


def test_starting_over_keeps_the_previous_run_aside(synthetic_sid: Path, tmp_path: Path) -> None:
    """resume=false: a fresh run, and the old one's checkpoints, metrics, images and W&B run
    kept aside (left in wandb/, the printed `wandb sync` uploaded it as a second run)."""
    overrides = [*FAST_TRAIN, "trainer.max_steps=2", *data_overrides(synthetic_sid, tmp_path)]
    run_entry_point("train.py", *overrides)
    run_dir = only_run_dir(tmp_path)
    first_metrics = (run_dir / "csv" / "metrics.csv").read_text()
    second = run_entry_point("train.py", *overrides, "resume=false")
    assert "Restoring states" not in second.stdout + second.stderr
    assert "Previous log files" not in second.stdout + second.stderr
    (kept,) = run_dir.glob("replaced-*")
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoints", "csv", "images",
                                                     "learning_curve.png", "wandb"]
    (old_run,) = (kept / "wandb").glob("offline-run-*")
    (new_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert old_run.name.split("-")[-1] != new_run.name.split("-")[-1]  # two run ids
    assert f"wandb sync {new_run}" in second.stdout + second.stderr
    assert (kept / "csv" / "metrics.csv").read_text() == first_metrics
    assert {p.name for p in (kept / "checkpoints").glob("*.ckpt")} >= {"last.ckpt"}
    # The new run's folder holds only its own checkpoints, written afresh.
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1


def test_logger_none_still_writes_checkpoints(synthetic_sid: Path, tmp_path: Path) -> None:
    run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=2", "logger=none",
                    *data_overrides(synthetic_sid, tmp_path))
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "wandb").exists() and not (run_dir / "csv").exists()


def test_the_same_command_trains_the_same_weights(synthetic_sid: Path, tmp_path: Path) -> None:
    """`seed` must fix the initial weights too: identical commands, identical runs."""
    weights = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        root = tmp_path / name
        run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=2", "logger=none",
                        f"seed={seed}", *data_overrides(synthetic_sid, root))
        last = only_run_dir(root) / "checkpoints" / "last.ckpt"
        weights.append(torch.load(last, map_location="cpu", weights_only=False)["state_dict"])
    same, other = weights[1], weights[2]
    assert all(torch.equal(weights[0][key], same[key]) for key in same)
    assert not all(torch.equal(weights[0][key], other[key]) for key in other)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.rdb=sideways", "model.rdb='sideways' is not allowed: choose one of "
                               "['before', 'after']"),
        ("optimizer.lr=-0.001", "optimizer.lr=-0.001 is not allowed: must be > 0"),
        ("trainer.precision=bf15", "trainer.precision='bf15' is not allowed: choose one of "
                                   "['32', '32-true', 'bf16-mixed', '16-mixed']"),
        ("data.amplification=guess", "data.amplification"),
        ("model.train_metrics_every_n_steps=15", "model.train_metrics_every_n_steps=15 is not "
                                                 "allowed: give a multiple of "
                                                 "trainer.log_every_n_steps=10"),
        ("data.patch_size=160", "data.patch_size=160 is too small for the loss: MS-SSIM over 5 "
                                "scales with loss.win_size=11 needs crops larger than 160 px; "
                                "use a multiple of 32 from 192"),
        ("model.summary_image_size=[100,64]", "model.summary_image_size=[100, 64] (by default "
                                              "data.patch_size, squared) is not allowed: give "
                                              "[height, width]"),
        ("seed=abc", "seed='abc' must be a whole number in [0, 2**32)"),
        # Wrong types: named by key, not a TypeError from a comparison inside the target.
        ("data.batch_size=abc", "data.batch_size='abc' must be an integer, not a string "
                                "(e.g. data.batch_size=8)"),
        ("data.fraction=abc", "data.fraction='abc' must be a number, not a string"),
        ("optimizer.lr=abc", "optimizer.lr='abc' must be a number, not a string "
                             "(e.g. optimizer.lr=0.0001)"),
        ("scheduler.milestones=[abc]", "scheduler.milestones=['abc'] must be a list of whole "
                                       "numbers"),
        # The patch size, not the model summary that defaults to it.
        ("data.patch_size=200", "data.patch_size=200 must be a multiple of 32 (full-resolution "
                                "pixels; the network downsamples by 32) and larger than 160 px"),
        # Before the pre-flight check (on SID: the cache build) and before rank 1 is started.
        ("data.batch_size=3 trainer=ddp trainer.devices=2 trainer.accelerator=cpu",
         "data.batch_size=3 is the global batch and must divide evenly over 2 devices; use a "
         "multiple of 2"),
        # Nothing starts the second node here: Lightning waited for it for half an hour.
        ("trainer=ddp trainer.accelerator=cpu trainer.devices=1 trainer.num_nodes=2",
         "trainer.num_nodes=2 needs one process per node started on 2 machines, and nothing "
         "here starts them"),
        # One callback file as the whole group would drop checkpoints, resume and the alarms.
        ("callbacks=lr_monitor", "callbacks=lr_monitor replaces all default callbacks ("),
        # Pre-flight settings before the data (on SID the cache build, hours), not at the check.
        ("+preflight.overfit.step=5", "preflight.overfit.step is not a pre-flight setting: did "
                                      "you mean preflight.overfit.steps?"),
        ("+model.rbd=after", "model.rbd is not a setting of the model: did you mean model.rdb?"),
        # Hydra's own composition errors, in one line too (it printed a block of them).
        ("model.rbd=after", "model.rbd is not a setting: did you mean model.rdb?"),
        ("experiment=papper", "experiment=papper is not an option of the experiment group"),
    ],
)
def test_bad_values_fail_at_start_with_what_is_allowed(override: str, message: str,
                                                       tmp_path: Path) -> None:
    proc = run_entry_point("train.py", *override.split(), f"paths.root_dir={tmp_path}",
                           check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert message in proc.stderr
    assert proc.stderr.count("darkraw: error:") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # failed before generating or caching any data
    assert "Initializing distributed" not in proc.stdout + proc.stderr  # no rank was started
    # A refused launch leaves no run folder (it had `.hydra/`, a log and a FAILED marker).
    assert not list((tmp_path / "outputs").glob("*/runs/*"))


def test_a_refused_relaunch_leaves_the_finished_run_as_it_was_and_a_good_one_reports_it(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """data.num_workers is left out of the folder name, so a bad value of it lands in the
    finished run's folder: it was marked failed (FAILED, traceback.txt, job_status.json) and its
    `.hydra` record, which `sweeps.compare` reads, held the refused settings."""
    overrides = [*FAST_TRAIN, "trainer.max_steps=2", *data_overrides(synthetic_sid, tmp_path)]
    first = run_entry_point("train.py", *overrides).stderr
    run_dir = only_run_dir(tmp_path)
    records = ["job_status.json", ".hydra/config.yaml", ".hydra/hydra.yaml",
               ".hydra/overrides.yaml"]
    before = {name: (run_dir / name).read_bytes() for name in records}
    proc = run_entry_point("train.py", *overrides, "data.num_workers=-1", check=False)
    assert proc.returncode == 1 and "darkraw: error: data.num_workers=-1 must be >= 0" in \
        proc.stderr, proc.stderr[-3000:]
    assert "Seed set to" not in proc.stdout + proc.stderr  # no line of a run that never was
    # FAST_TRAIN has data.num_workers=0 too: Hydra takes the last without a word, darkraw warns.
    assert ("darkraw: warning: data.num_workers is given 2 times (data.num_workers=0, then "
            "data.num_workers=-1): only the last counts") in proc.stderr
    assert only_run_dir(tmp_path) == run_dir
    assert {name: (run_dir / name).read_bytes() for name in records} == before
    assert not (run_dir / "FAILED").exists() and not (run_dir / "traceback.txt").exists()
    # Nor does resume=false get to set the run aside before the mistake is found.
    proc = run_entry_point("train.py", *overrides, "resume=false", "data.num_workers=-1",
                           check=False)
    assert proc.returncode == 1 and "data.num_workers=-1 must be >= 0" in proc.stderr
    assert not list(run_dir.glob("replaced-*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert {name: (run_dir / name).read_bytes() for name in records} == before
    # The same command without the mistake is accepted again, and records its own launch.
    again = run_entry_point("train.py", *overrides, "data.num_workers=1").stderr
    assert json.loads((run_dir / "job_status.json").read_text())["attempts"] == 2
    assert "data.num_workers=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # That relaunch finds training finished: it validates nothing, and its summary had no
    # figure at all ("0.0 min"); it reports the run's last validation, from the metrics CSV.
    psnr = re.search(r"last val PSNR +([0-9.]+ dB \(amplified input: [^)]*\))", first)
    ssim = re.search(r"last val SSIM +([0-9.]+)", first)
    assert psnr and ssim, first[-3000:]
    assert re.search(r"darkraw: run finished at step 2 \(this launch: \d+ s\)", again), again
    assert (f"last val PSNR      {psnr.group(1)}, validated after step 2 by an earlier launch"
            in again), again[-3000:]
    assert f"last val SSIM      {ssim.group(1)}" in again


def test_a_data_error_ends_the_run_before_any_wandb_run_is_started(synthetic_sid: Path,
                                                                    tmp_path: Path) -> None:
    """With the pre-flight check off (or on resume) the data was first read in Lightning's
    setup, after W&B had started: each such failed sweep job left an empty run in its group."""
    root = tmp_path / "sid"
    shutil.copytree(synthetic_sid, root)
    (missing,) = [p for p in (root / "Sony" / "short").iterdir() if p.name.startswith("00001_")]
    missing.unlink()
    proc = run_entry_point("train.py", *FAST_TRAIN, "data=sid", f"data.root={root}",
                           f"data.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}",
                           "preflight.enabled=false", check=False, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("darkraw: error:") == 1 and "Traceback" not in proc.stderr
    assert f"listed file {missing} does not exist" in proc.stderr
    assert not list(tmp_path.glob("outputs/**/wandb")) and "wandb sync" not in proc.stderr


def test_a_damaged_last_checkpoint_is_named_with_what_to_do(synthetic_sid: Path,
                                                            tmp_path: Path) -> None:
    """A truncated last.ckpt: one line naming it and the ways out, not torch's traceback; the
    copy it suggests resumes."""
    args = (*FAST_TRAIN, "trainer.max_steps=2", "logger=none", "preflight.enabled=false",
            "callbacks.image_panel=null", *data_overrides(synthetic_sid, tmp_path))
    run_entry_point("train.py", *args)
    checkpoints = only_run_dir(tmp_path) / "checkpoints"
    last = checkpoints / "last.ckpt"
    (best,) = checkpoints.glob("best-*.ckpt")
    with last.open("r+b") as handle:
        handle.truncate(100_000)  # what `truncate -s 100000 last.ckpt` does

    proc = run_entry_point("train.py", *args, check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("darkraw: error:") == 1
    line = next(x for x in proc.stderr.splitlines() if x.startswith("darkraw: error:"))
    assert f"the checkpoint to resume from, {last}, is damaged and cannot be read" in line
    assert "PytorchStreamReader failed reading zip archive" in line
    assert "start over with resume=false" in line
    assert f"cp {best} {last}" in line and f"(intact: {best.name})" in line

    shutil.copyfile(best, last)  # as the message says
    resumed = run_entry_point("train.py", *args)
    assert "Resuming from" in resumed.stdout + resumed.stderr


def test_sigterm_before_training_says_so_and_exits_143(synthetic_sid: Path,
                                                       tmp_path: Path) -> None:
    """SIGTERM while the cache is being built (JobStatus's handler, not Lightning's): a
    ``darkraw:`` line on the console, as for Ctrl-C, besides the record in job_status.json."""
    from datamodules.cache import LOCK_NAME

    cache = tmp_path / "cache"
    cache.mkdir()
    command = [sys.executable, "train.py", *FAST_TRAIN, "logger=none", "data.progress=false",
               *data_overrides(synthetic_sid, tmp_path)]
    # Holding the cache's build lock makes train.py wait in the cache build, before training.
    with open(cache / LOCK_NAME, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        # Lines come from a reader thread: select() on the pipe misses lines already read into
        # the text wrapper's buffer (two lines arriving together), and the wait then timed out.
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout],
                                  daemon=True)
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            if "another process is building the darkraw cache" in seen[-1]:
                break
        assert seen and "another process is building" in seen[-1], "".join(seen)[-3000:]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=10)
        while not lines.empty():
            seen.append(lines.get())
        out = "".join(seen)
    assert process.returncode == 143, out[-3000:]
    assert "darkraw: stopped by SIGTERM before training" in out and "Traceback" not in out
    record = json.loads((only_run_dir(tmp_path) / "job_status.json").read_text())
    assert record["status"] == "interrupted" and record["error_type"] == "Terminated"


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="needs a machine without a GPU")
def test_the_paper_recipe_without_a_gpu_says_how_to_train_on_the_cpu(tmp_path: Path) -> None:
    proc = run_entry_point("train.py", "experiment=paper", f"paths.root_dir={tmp_path}",
                           check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "trainer.accelerator='gpu' is not available" in proc.stderr
    assert "trainer.accelerator=cpu" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_sid_root_names_the_path_and_the_layout(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_SID"
    proc = run_entry_point("train.py", "data=sid", f"data.root={missing}",
                           "trainer.accelerator=cpu", f"paths.root_dir={tmp_path}",
                           check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert str(missing) in proc.stderr and "Sony" in proc.stderr
    assert "set data.root=<SID folder> (or paths.sid_root" in proc.stderr  # what to do
    assert "Traceback" not in proc.stderr


def test_experiments_compose_to_the_documented_recipes() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        paper = compose("train", overrides=["experiment=paper"])
        ablation = compose("train", overrides=["experiment=ablation_baseline"])
        default = compose("train")
        # A trainer group on the command line wins over the quickstart's CPU default (the
        # README's multi-GPU and SLURM examples give no experiment).
        on_gpu = compose("train", overrides=["trainer=gpu"])
        ddp = compose("train", overrides=["trainer=ddp", "trainer.devices=4"])
    assert on_gpu.trainer.accelerator == "gpu"
    assert (ddp.trainer.accelerator, ddp.trainer.devices) == ("gpu", 4)
    assert paper.trainer.max_steps == 1_000_000 and paper.data.batch_size == 8
    assert paper.scheduler.milestones == [500_000] and paper.scheduler.gamma == 0.1
    assert paper.scheduler.min_lr == 1e-5 and paper.optimizer.lr == 1e-4
    assert paper.data.patch_size == 512 and paper.loss.ms_ssim_weight == 0.2
    assert (paper.data.hflip_prob, paper.data.vflip_prob) == (0.5, 0.2)
    assert paper.data._target_.endswith("SIDDataModule") and paper.model.rdb == "before"
    assert ablation.trainer.max_steps == 500_000 and ablation.scheduler.milestones == [250_000]
    assert ablation.data.fraction == 0.6 and ablation.data.amplification == "estimated"
    assert default.name == "quickstart" and default.trainer.accelerator == "cpu"
    assert default.data._target_.endswith("SyntheticSIDDataModule")


def test_relaunching_resumes_into_the_same_wandb_run(synthetic_sid: Path, tmp_path: Path) -> None:
    args = (*FAST_TRAIN, "trainer.max_steps=2", "preflight.enabled=false",
            "callbacks.image_panel=null", *data_overrides(synthetic_sid, tmp_path))
    run_entry_point("train.py", *args)
    second = run_entry_point("train.py", *args)  # same command: same folder, resumes
    assert "Resuming from" in second.stdout + second.stderr
    assert "exists and is not empty" not in second.stdout + second.stderr
    run_dir = only_run_dir(tmp_path)
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2
    assert all(p.name.endswith(f"-{run_id}") for p in offline_runs)  # `wandb sync` merges them
    # The summary's upload command takes every launch's folder, not only the last one's.
    assert f"wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*" in second.stderr


def test_only_lightnings_false_alarms_are_silenced() -> None:
    from lightning.pytorch.utilities import rank_zero_warn
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from darkraw.training import quiet_library_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        # Lightning 2.6's wording (loops/fit_loop.py), for the quickstart's 4 batches an epoch.
        rank_zero_warn("The number of training batches (4) is smaller than the logging interval"
                       " Trainer(log_every_n_steps=10). Set a lower value for log_every_n_steps if"
                       " you want to see logs for the training epoch.",
                       category=PossibleUserWarning)
        # loops/training_epoch_loop.py, on every mid-epoch resume: the patch stream resumes.
        rank_zero_warn("You're resuming from a checkpoint that ended before the epoch ended and "
                       "your dataloader is not resumable. This can cause unreliable results if "
                       "further training is done.", category=PossibleUserWarning)
        rank_zero_warn("The dataloader does not have many workers", category=PossibleUserWarning)
    assert [str(w.message) for w in caught] == ["The dataloader does not have many workers"]


def test_help_names_every_group_launcher_and_named_sweep() -> None:
    proc = run_entry_point("train.py", "--help", timeout=120)
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra"}
    for group in groups - {"local"}:  # conf/local/ is the user's own, usually absent
        assert f"\n{group}: " in proc.stdout, group
    launchers = "|".join(["basic", *sorted(p.stem for p in (REPO / "conf/hydra/launcher")
                                           .glob("*.yaml"))])
    assert f"hydra/launcher={launchers}" in proc.stdout
    # The callbacks group's other names are parts of `default`, not alternatives to it.
    assert "callbacks: only `default` is a choice" in proc.stdout
    sweeps = sorted(p.stem for p in (REPO / "sweeps/conf/sweep").glob("*.yaml"))
    named = re.search(r"\+sweep=(\S+)", proc.stdout)
    assert named and sorted(named.group(1).split("|")) == sweeps


def test_the_summary_lists_only_files_that_exist(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from darkraw.training import RunSummary, print_summary

    summary = RunSummary(output_dir=tmp_path, metrics={"val/psnr": 20.0}, global_step=3)
    print_summary(summary)  # no validation ran: no images folder
    assert "validation images" not in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "val_step0000003.png").write_bytes(b"png")
    print_summary(summary)
    assert f"validation images  {tmp_path / 'images'}" in capsys.readouterr().err


def test_warnings_reach_the_jobs_log_file(synthetic_sid: Path, tmp_path: Path) -> None:
    """On a cluster the job's log file is the record: warnings belong in it, once on screen."""
    proc = run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=2", "logger=none",
                           "optimizer.lr=1e-4", "scheduler.gamma=0.02", "scheduler.min_lr=1e-5",
                           "scheduler.milestones=[1,5]", *data_overrides(synthetic_sid, tmp_path))
    log_text = (only_run_dir(tmp_path) / "train.log").read_text()
    floor = "but scheduler.min_lr=1e-05 floors it there"  # darkraw's lr floor warning
    assert log_text.count(floor) == 1 and "[py.warnings][WARNING]" in log_text
    assert (proc.stdout + proc.stderr).count(floor) == 1  # and once on screen
    late = "the decay at step 5 comes at or after trainer.max_steps=2"  # and its late decay
    assert log_text.count(late) == 1 and (proc.stdout + proc.stderr).count(late) == 1


def test_testing_after_fit_keeps_the_validation_figures(synthetic_sid: Path,
                                                        tmp_path: Path) -> None:
    proc = run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=2", "logger=none",
                           "test_after_fit=true", *data_overrides(synthetic_sid, tmp_path))
    metrics = json.loads((only_run_dir(tmp_path) / "job_status.json").read_text())["metrics"]
    assert {"val/psnr", "val/ssim", "test/psnr", "test/ssim"} <= set(metrics)
    assert "last val PSNR" in proc.stderr and "test (best ckpt)" in proc.stderr


def test_sigterm_while_testing_after_fit_exits_143_saying_training_had_finished(
        tmp_path: Path) -> None:
    """Lightning's SIGTERM in trainer.test is a SystemExit without a code: the process exited 0
    and a SLURM time limit during experiment=paper's test phase looked like a finished job.

    Its own small set with two test images: Lightning acts on a SIGTERM only between batches.
    """
    two_test_images = {**FIXTURE_SET, "num_train_scenes": 1, "num_test_scenes": 2}
    own_set = [f"data.root={tmp_path / 'set'}", f"data.cache_dir={tmp_path / 'cache'}",
               f"paths.root_dir={tmp_path}",
               *(f"data.synthetic.{key}={value}" for key, value in two_test_images.items())]
    proc = run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=2", "logger=none",
                           "test_after_fit=true", *own_set, "data.progress=false",
                           "+callbacks.stop._target_=tests.signal_helpers.SigtermWhenTesting",
                           check=False)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert ("darkraw: stopped by SIGTERM after training had finished at step 2 (testing the best "
            "checkpoint or writing the run's summary), exit status 143" in proc.stderr)
    assert "before training" not in proc.stderr and "Traceback" not in proc.stderr
    status = json.loads((only_run_dir(tmp_path) / "job_status.json").read_text())
    assert status["status"] == "interrupted"


def test_sigterm_of_a_resume_false_run_does_not_say_the_same_command_resumes(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """The same command, resume=false included, would move the checkpoint aside and start over."""
    proc = run_entry_point("train.py", *FAST_TRAIN, "trainer.max_steps=4", "logger=none",
                           "preflight.enabled=false", "resume=false",
                           *data_overrides(synthetic_sid, tmp_path),
                           "+callbacks.stop._target_=tests.signal_helpers.SigtermAtFirstStep",
                           check=False)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert ("Relaunch it without resume=false to resume (resume=false starts over again)."
            in proc.stderr), proc.stderr[-3000:]
    assert "Relaunch the same command" not in proc.stderr


def test_a_longer_run_of_the_same_settings_says_how_to_continue_the_shorter_one(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """trainer.max_steps names the run folder: "train it longer" started over from scratch in a
    new folder, hours from the checkpoint it was meant to continue, without a word."""
    args = (*(o for o in FAST_TRAIN if not o.startswith("trainer.max_steps=")), "logger=none",
            "preflight.enabled=false", "callbacks.image_panel=null",
            *data_overrides(synthetic_sid, tmp_path))
    first = run_entry_point("train.py", *args, "trainer.max_steps=2")
    assert "holds a run with the same settings" not in first.stdout + first.stderr
    shorter = only_run_dir(tmp_path)
    longer = run_entry_point("train.py", *args, "trainer.max_steps=3", "data.num_workers=1")
    output = longer.stdout + longer.stderr
    assert (f"{shorter} holds a run with the same settings but trainer.max_steps=2, with a "
            "checkpoint; this command starts a new run from scratch in ") in output, output[-3000:]
    assert f"add hydra.run.dir={shorter} (it resumes at its last step" in output


def test_resuming_under_other_training_settings_is_refused_by_name(synthetic_sid: Path,
                                                                     tmp_path: Path) -> None:
    """A pinned run folder (or an edited config file) with a new lr and RDB variant resumed the
    old weights into the other network and kept the checkpoint's lr, without a word."""
    args = (*(o for o in FAST_TRAIN if not o.startswith("trainer.max_steps=")), "logger=none",
            "preflight.enabled=false", "callbacks.image_panel=null",
            *data_overrides(synthetic_sid, tmp_path), f"hydra.run.dir={tmp_path / 'run'}")
    run_entry_point("train.py", *args, "trainer.max_steps=2")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    changed = run_entry_point("train.py", *args, "trainer.max_steps=2", "optimizer.lr=0.01",
                              "model.rdb=after", check=False)
    assert changed.returncode != 0
    assert (f"darkraw: error: cannot resume {last}: it was trained with other settings than this "
            "command's: model.rdb='after' (the checkpoint's run: 'before'); optimizer.lr=0.01 (the "
            "checkpoint's run: 0.0005)." in changed.stderr), changed.stderr[-3000:]
    assert "resume=false" in changed.stderr and "Traceback" not in changed.stderr
    assert last.read_bytes() == before
    # What only says how the run is run (loader workers, its length) may change: it resumes.
    longer = run_entry_point("train.py", *args, "trainer.max_steps=3",
                             "data.num_workers=1", "data.persistent_workers=false")
    assert "Resuming from" in longer.stdout + longer.stderr
    assert torch.load(last, weights_only=False)["global_step"] == 3

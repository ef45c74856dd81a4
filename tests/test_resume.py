"""A killed train.py run resumes with the same command and ends like an uninterrupted one.

Real processes on the generated SID-style set: a reference run, then runs that are SIGKILLed or
SIGTERMed as soon as their ``last.ckpt`` holds a new step, and relaunched.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import (
    FAST_TRAIN,
    REPO,
    SLURM_TASK_ENV,
    fixture_data_overrides,
    recorded_run,
    run_entry_point,
    stand_in_scontrol,
    start_train_py_process_group,
    subprocess_env,
    wait_for_run_file,
)

pytestmark = pytest.mark.slow

MAX_STEPS = 10
# Fast settings; last.ckpt every step; the learning rate halves at step 6, so "same LR" means
# the resumed scheduler state is right; a tiny pre-flight check (it must be skipped on resume).
SETTINGS = (
    *FAST_TRAIN, "logger=csv", "callbacks.image_panel=null",
    f"trainer.max_steps={MAX_STEPS}", "trainer.val_check_interval=4",
    "callbacks.last_checkpoint.every_n_train_steps=1",
    "scheduler.milestones=[6]", "scheduler.gamma=0.5", "scheduler.min_lr=0",
    "preflight.overfit.steps=5", "preflight.overfit.max_loss_ratio=0.99",
)
PREFLIGHT_PASSED = "pre-flight check passed"


def command(synthetic_sid: Path, cache_dir: Path, root: Path) -> list[str]:
    return [*SETTINGS, *fixture_data_overrides(synthetic_sid, cache_dir), f"paths.root_dir={root}"]


def output_dir(root: Path) -> Path:
    [folder] = [p.parent.parent for p in root.glob("outputs/*/runs/*/checkpoints/last.ckpt")]
    return folder


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]


def lr_of(checkpoint: dict[str, Any]) -> float:
    return checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume_cache")


@pytest.fixture(scope="module")
def reference(synthetic_sid: Path, cache_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    proc = run_entry_point("train.py", *command(synthetic_sid, cache_dir, root))
    assert PREFLIGHT_PASSED in proc.stdout + proc.stderr
    return output_dir(root)


def wait_for_a_periodic_last_ckpt(proc: subprocess.Popen[str], root: Path, err: Path) -> None:
    """Until the training ``proc`` (in ``root``) has written its first periodic last.ckpt."""
    wait_for_run_file(proc, root, "checkpoints/last.ckpt", err)


def start_and_stop(args: list[str], root: Path, sig: signal.Signals, after_step: int = 0,
                   timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], int]:
    """Start train.py; once its last.ckpt is past ``after_step``, send ``sig``; wait for exit."""
    out, err = root / f"{sig.name}.stdout", root / f"{sig.name}.stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:  # files: a full pipe would block
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                                env=subprocess_env(), stdout=stdout, stderr=stderr)
    step, deadline = after_step, time.monotonic() + timeout
    try:
        while step <= after_step:
            assert proc.poll() is None, f"train.py ended before it was stopped:\n{err.read_text()}"
            assert time.monotonic() < deadline, f"no last.ckpt past step {after_step} in time"
            found = list(root.glob("outputs/*/runs/*/checkpoints/last.ckpt"))
            if found:
                step = load(found[0])["global_step"]  # complete: writes are atomic
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert step < MAX_STEPS, "the run finished before it could be stopped"
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(),
                                       err.read_text())
    return done, step


def assert_same_as_reference(folder: Path, reference: Path) -> None:
    final, ref = load(folder / "checkpoints" / "last.ckpt"), load(reference / "checkpoints" /
                                                                  "last.ckpt")
    assert final["global_step"] == ref["global_step"] == MAX_STEPS
    assert lr_of(final) == lr_of(ref) == pytest.approx(5e-4 * 0.5)
    rows, ref_rows = metrics(folder), metrics(reference)
    assert max(int(r["step"]) for r in rows) == max(int(r["step"]) for r in ref_rows)
    # Every step trained and logged once, at the reference's learning rate, validated alike.
    assert [s for s, _ in column(rows, "train/loss")] == list(range(MAX_STEPS))
    assert column(rows, "lr-Adam") == column(ref_rows, "lr-Adam")
    # ...on the same patches: the resumed segments continue the uninterrupted run's patch
    # stream (datamodules/patch_stream.py) instead of replaying it from its first batch, so the
    # losses and the weights are those of the run that was never stopped.
    losses, ref_losses = column(rows, "train/loss"), column(ref_rows, "train/loss")
    assert [v for _, v in losses] == pytest.approx([v for _, v in ref_losses], rel=1e-5)
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-4, atol=1e-6)
    assert [s for s, _ in column(rows, "val/psnr")] == [s for s, _ in column(ref_rows, "val/psnr")]
    # The learning-health alarms judge the resumed run as the uninterrupted one: same tracks,
    # and the same training loss gathered since the last validation (not only after the resume).
    [health_key] = [key for key in ref["callbacks"] if key.startswith("LearningHealth")]
    health, ref_health = final["callbacks"][health_key], ref["callbacks"][health_key]
    assert ref_health["loss_count"] == MAX_STEPS % 4 and ref_health["tracks"]
    assert health["loss_count"] == ref_health["loss_count"]
    assert health["loss_sum"] == pytest.approx(ref_health["loss_sum"], rel=1e-5)
    for name, track in ref_health["tracks"].items():
        for key in ("best", "last"):
            assert health["tracks"][name][key] == pytest.approx(track[key], rel=1e-5), (name, key)
        assert health["tracks"][name]["stalled"] == track["stalled"]


def test_sigkill_then_sigterm_resume_to_the_same_end(synthetic_sid: Path, cache_dir: Path,
                                                    reference: Path, tmp_path: Path) -> None:
    """One run stopped twice (4 train.py processes in all, not 5: each costs seconds)."""
    args = command(synthetic_sid, cache_dir, tmp_path)
    # 1. SIGKILL: no chance to save; the last atomic write is the resume point.
    killed, step = start_and_stop(args, tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert PREFLIGHT_PASSED in killed.stdout + killed.stderr
    folder = output_dir(tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    killed_at = load(last)["global_step"]
    assert killed_at >= step >= 1

    # 2. The same command resumes from that step (no pre-flight check), then gets SIGTERM:
    # it saves, says so, and exits non-zero.
    stopped, _ = start_and_stop(args, tmp_path, signal.SIGTERM, after_step=killed_at)
    assert f"Restoring states from the checkpoint path at {last}" in stopped.stdout + stopped.stderr
    assert PREFLIGHT_PASSED not in stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "darkraw: stopped by SIGTERM at step" in stopped.stderr
    assert "Relaunch the same command to resume" in stopped.stderr
    assert load(last)["global_step"] > killed_at

    # 3. resume=true finishes it: same steps, learning rate and logged history as the reference.
    resumed = run_entry_point("train.py", *args, "resume=true")
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    assert_same_as_reference(folder, reference)


def test_slurms_time_limit_signal_mid_step_stops_saves_requeues_and_resumes_exactly(
        synthetic_sid: Path, cache_dir: Path, reference: Path, tmp_path: Path) -> None:
    """Lightning's own requeue saved hpc_ckpt inside the step: the requeued job skipped the
    batch in flight and logged every later value a step late. darkraw finishes the step, saves
    last.ckpt, and runs ``scontrol requeue`` as the process exits."""
    path, calls = stand_in_scontrol(tmp_path / "bin")
    slurm = {**SLURM_TASK_ENV, "PATH": path}
    args = [*command(synthetic_sid, cache_dir, tmp_path),
            "+callbacks.time_limit._target_=tests.signal_helpers.SlurmTimeLimitSignalMidStep",
            "+callbacks.time_limit.at_step=3", f"+callbacks.time_limit.marker={tmp_path / 'sent'}"]
    first = run_entry_point("train.py", *args, check=False, **slurm)
    assert first.returncode == 143, first.stderr[-3000:]
    assert ("darkraw: SLURM's time-limit signal (SIGUSR1) at step 3: stopping after this step "
            "to save last.ckpt and requeue the job" in first.stderr)
    folder = output_dir(tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    assert (f"darkraw: stopped by SLURM's time-limit signal at step 4; resume point {last} at "
            "step 4. The SLURM job is requeued as this process exits" in first.stderr)
    assert "darkraw: requeued SLURM job 4242" in first.stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not list(folder.glob("hpc_ckpt_*.ckpt")), "Lightning's own requeue must be off"
    assert load(last)["global_step"] == 4
    record = json.loads((folder / "job_status.json").read_text())
    assert record["status"] == "interrupted" and record["global_step"] == 4
    assert record["error"].startswith("stopped by SLURM's time-limit signal at step 4;")

    requeued = run_entry_point("train.py", *args, **slurm, SLURM_RESTART_COUNT="1")
    assert f"Restoring states from the checkpoint path at {last}" in requeued.stdout + \
        requeued.stderr
    assert_same_as_reference(folder, reference)


def test_slurms_time_limit_signal_before_training_requeues_at_once(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """Before fit (data, cache, pre-flight check) SLURM's default for USR1 ended the job
    unrequeued. It is requeued at once; SLURM's SIGTERM after it stops the job as ever."""
    # As SLURM does on a requeue: SIGTERM to the job's process (here before scontrol returns,
    # so that it surely comes before training: on a busy machine a second's delay did not).
    path, calls = stand_in_scontrol(tmp_path / "bin", then="kill -TERM $PPID")
    args = command(synthetic_sid, tmp_path / "cache", tmp_path)  # a cache of its own to build
    err = tmp_path / "stderr"
    with open(tmp_path / "stdout", "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                                env=subprocess_env(**SLURM_TASK_ENV, PATH=path), stdout=stdout,
                                stderr=stderr)
    try:
        # The job's record exists once the handler is in place; the cache is built after it.
        wait_for_run_file(proc, tmp_path, "job_status.json", err, timeout=120)
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert proc.returncode == 143, text[-3000:]
    assert ("darkraw: SLURM's time-limit signal (SIGUSR1) outside training: requeueing the job "
            "now" in text), text[-3000:]
    assert "stopped by SIGTERM before training" in text
    assert calls.read_text().split() == ["requeue", "4242"]
    [record] = tmp_path.glob("outputs/*/runs/*/job_status.json")
    assert json.loads(record.read_text())["status"] == "interrupted"


@pytest.mark.parametrize(("sig", "name", "status"), [(signal.SIGINT, "Ctrl-C", 130),
                                                     (signal.SIGTERM, "SIGTERM", 143)])
def test_a_stop_signal_to_the_process_group_saves_and_resumes(
        synthetic_sid: Path, cache_dir: Path, tmp_path: Path, sig: signal.Signals, name: str,
        status: int) -> None:
    """Ctrl-C in a terminal, ``timeout``, ``kill -- -PGID`` and SLURM signal every process,
    loader workers included: the run still saves last.ckpt at the step it stopped at (not the
    last periodic save), and is recorded as interrupted, not failed."""
    args = [*command(synthetic_sid, cache_dir, tmp_path), "preflight.enabled=false",
            "trainer.max_steps=60", "trainer.val_check_interval=1000",
            "callbacks.last_checkpoint.every_n_train_steps=3",
            # A worker process too: a terminal's Ctrl-C reaches it as well.
            "data.num_workers=1", "data.persistent_workers=true"]
    err = tmp_path / "sigint.stderr"
    proc = start_train_py_process_group(args, tmp_path / "sigint.stdout", err)
    try:
        wait_for_a_periodic_last_ckpt(proc, tmp_path, err)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr_text = err.read_text()
    assert proc.returncode == status, stderr_text[-3000:]
    match = re.search(rf"darkraw: stopped by {name} at step (\d+); resume point (\S+) at step "
                      r"(\d+)\.", stderr_text)
    assert match, stderr_text[-3000:]
    assert "Traceback" not in stderr_text and "exited unexpectedly" not in stderr_text
    stopped_at = int(match.group(1))
    last = Path(match.group(2))
    assert int(match.group(3)) == stopped_at == load(last)["global_step"] < 60
    job_status = json.loads((last.parent.parent / "job_status.json").read_text())
    assert job_status["status"] == "interrupted"
    # The record says where it stopped and resumes, not only that it did.
    assert job_status["global_step"] == stopped_at == job_status["segments"][-1]["global_step"]
    assert job_status["resume_checkpoint"] == str(last)
    assert job_status["error"] == (f"{match.group(0).removeprefix('darkraw: ')} Relaunch the "
                                   f"same command to resume (resume=auto). (exit status {status})")

    resumed = run_entry_point("train.py", *args)  # the same command continues
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + \
        resumed.stderr
    assert load(last)["global_step"] == 60


def test_a_second_launch_into_a_training_runs_folder_is_refused(
        synthetic_sid: Path, cache_dir: Path, tmp_path: Path) -> None:
    """The same command in a second terminal: it would resume the first's last.ckpt, and both
    would write the same checkpoints and metrics.csv."""
    args = [*command(synthetic_sid, cache_dir, tmp_path), "preflight.enabled=false",
            "trainer.max_steps=100000", "trainer.val_check_interval=100000",
            "callbacks.last_checkpoint.every_n_train_steps=2"]
    err = tmp_path / "first.stderr"
    first = start_train_py_process_group(args, tmp_path / "first.stdout", err)
    try:
        wait_for_a_periodic_last_ckpt(first, tmp_path, err)
        folder = output_dir(tmp_path)
        record = (folder / "job_status.json").read_bytes()
        overrides = (folder / ".hydra" / "overrides.yaml").read_bytes()
        second = run_entry_point("train.py", *args, check=False, timeout=120)
        assert first.poll() is None, "the first run must still be training"
        assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
        assert (f"darkraw: error: {folder} is in use by another training (pid {first.pid} on "
                in second.stderr), second.stderr
        assert "Traceback" not in second.stderr
        # The first run's record and its Hydra record are as it left them.
        assert json.loads(record)["status"] == "running"
        assert (folder / "job_status.json").read_bytes() == record
        assert (folder / ".hydra" / "overrides.yaml").read_bytes() == overrides
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143, err.read_text()[-3000:]
    assert json.loads((folder / "job_status.json").read_text())["status"] == "interrupted"


def test_the_run_to_train_longer_is_found_by_its_other_overrides(tmp_path: Path) -> None:
    """Only a folder differing in trainer.max_steps alone, and holding a checkpoint, is meant;
    keys that do not name folders (paths, workers) may differ."""
    from darkraw.resume import same_run_with_other_max_steps

    def run(name: str, overrides: list[str], checkpoint: bool = True) -> Path:
        return recorded_run(tmp_path / name, overrides, checkpoint)

    shorter = run("a", ["model.rdb=after", "trainer.max_steps=100", "data.num_workers=8"])
    run("b", ["model.rdb=before", "trainer.max_steps=100"])  # another network
    run("c", ["model.rdb=after", "trainer.max_steps=50"], checkpoint=False)  # nothing to resume
    default_length = run("d", ["model.rdb=after"])
    here = tmp_path / "new"
    found = same_run_with_other_max_steps(here, ["model.rdb=after", "trainer.max_steps=200",
                                                 "data.num_workers=2"], ["data.num_workers"])
    assert found == [(shorter, "100"), (default_length, None)]
    assert same_run_with_other_max_steps(here, ["model.rdb=after", "trainer.max_steps=100"],
                                         []) == [(default_length, None)]  # the same: not "other"

"""``job_status.json`` over a job's life, relaunches and SIGTERM, on real job folders.

A job folder outlives its processes: a killed run is relaunched with the same command, a sweep is
continued with the same ``hydra.sweep.dir``. The record must describe the job (first start, total
wall time, every metric it reported), not only its last process. A fake clock makes the wall
times exact; the SIGTERM tests send a real signal to a real subprocess, since SIGTERM's default
action kills the process before any Python code could record anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time as real_time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps import job_status
from sweeps.compare import collect, table_rows
from sweeps.job_status import JobStatus, read_status
from tests.helpers import REPO, subprocess_env


class Clock:
    """Stands in for the ``time`` module inside job_status: ``time()`` is what the test says."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    strftime = staticmethod(real_time.strftime)
    localtime = staticmethod(real_time.localtime)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(job_status, "time", fake)
    return fake


def summary(step: int, **metrics: float) -> SimpleNamespace:
    """What train.py hands to ``completed``: a RunSummary's fields."""
    return SimpleNamespace(metrics=metrics, global_step=step, wall_seconds=1.0,
                           metrics_csv=None, best_checkpoint=None)


def segment(job: Path, clock: Clock, seconds: float, end: str, *,
            overrides: list[str] | None = None, **metrics: float) -> None:
    """One launch of the job, as train.py runs it: start, ``seconds`` later end as ``end``."""
    status = JobStatus(job, overrides or ["model.rdb=after"], enabled=True)
    status.start()
    assert read_status(job)["status"] == "running"
    clock.now += seconds
    if end == "completed":
        status.completed(summary(4, **metrics))
    elif end == "interrupted":
        status.interrupted(SystemExit(143))
    else:
        status.failed(ValueError("optimizer.lr=-1 is not allowed"))
    clock.now += 600  # time between launches is no job's time


def wall_column(sweep: Path) -> str:
    header, rows = table_rows(collect(sweep))
    return rows[0][header.index("wall")]


def test_relaunch_after_completion_adds_up_and_keeps_metrics(tmp_path: Path,
                                                             clock: Clock) -> None:
    job = tmp_path / "sweep" / "model.rdb=after"
    first_start = clock.now
    segment(job, clock, 130.0, "completed", **{"val/psnr": 20.0, "val/ssim": 0.5,
                                               "best/val/psnr": 21.0})
    # The relaunch finds max_steps reached: it validates nothing, reports only the best score.
    segment(job, clock, 2.0, "completed", **{"best/val/psnr": 21.0})

    record = read_status(job)
    assert record["status"] == "completed"
    assert record["started"] == first_start
    assert record["wall_seconds"] == pytest.approx(132.0)
    assert record["attempts"] == 2
    assert [s["status"] for s in record["segments"]] == ["completed", "completed"]
    assert [s["wall_seconds"] for s in record["segments"]] == pytest.approx([130.0, 2.0])
    assert record["metrics"] == {"val/psnr": 20.0, "val/ssim": 0.5, "best/val/psnr": 21.0}
    assert wall_column(tmp_path / "sweep") == "2.2 min"  # not "2 s"


def test_killed_and_resumed_run_counts_both_segments(tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "sweep" / "model.rdb=after"
    segment(job, clock, 90.0, "interrupted")
    interrupted = read_status(job)
    assert interrupted["status"] == "interrupted" and interrupted["wall_seconds"] == 90.0
    segment(job, clock, 42.0, "completed", **{"val/psnr": 24.0, "best/val/psnr": 25.0})

    record = read_status(job)
    assert record["status"] == "completed"
    assert record["wall_seconds"] == pytest.approx(132.0)
    assert record["attempts"] == 2
    assert [s["status"] for s in record["segments"]] == ["interrupted", "completed"]
    assert "error" not in record and "error_type" not in record
    assert record["metrics"] == {"val/psnr": 24.0, "best/val/psnr": 25.0}
    assert wall_column(tmp_path / "sweep") == "2.2 min"


def test_a_newer_value_replaces_an_older_one(tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "job"
    segment(job, clock, 10.0, "completed", **{"val/psnr": 20.0, "best/val/psnr": 20.0,
                                              "val/ssim": 0.4})
    segment(job, clock, 10.0, "completed", **{"val/psnr": 23.0, "best/val/psnr": 23.5})
    assert read_status(job)["metrics"] == {"val/psnr": 23.0, "best/val/psnr": 23.5,
                                           "val/ssim": 0.4}


def test_a_failed_job_that_now_completes_shows_as_completed(tmp_path: Path,
                                                            clock: Clock) -> None:
    sweep = tmp_path / "sweep"
    job = sweep / "optimizer.lr=0.0005"
    segment(job, clock, 3.0, "failed")
    assert (job / "FAILED").is_file() and (job / "traceback.txt").is_file()
    assert read_status(job)["error_type"] == "ValueError"
    segment(job, clock, 60.0, "completed", **{"val/psnr": 22.0})

    record = read_status(job)
    assert record["status"] == "completed"
    assert not (job / "FAILED").exists() and not (job / "traceback.txt").exists()
    assert not {"error", "error_type", "traceback_file"} & set(record)
    assert [(s["status"], s.get("error_type")) for s in record["segments"]] == [
        ("failed", "ValueError"), ("completed", None)]
    assert record["wall_seconds"] == pytest.approx(63.0)
    (only,) = collect(sweep).jobs
    assert only.status == "completed" and only.error is None


def write_hydra_record(job: Path, overrides: list[str]) -> None:
    """What Hydra writes into the job folder before train.py's code runs."""
    hydra = job / ".hydra"
    hydra.mkdir(parents=True, exist_ok=True)
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra / "config.yaml").write_text(f"launch: {overrides}\n")
    (job / "train.log").write_text("log of this launch\n")


def test_a_refused_relaunch_puts_back_the_record_of_the_last_accepted_one(
        tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "runs" / "model.rdb=after"
    write_hydra_record(job, ["model.rdb=after"])
    first = JobStatus(job, ["model.rdb=after"], enabled=True)
    first.start()
    first.accept()
    first.failed(ValueError("the data ran out"))
    kept = {p.relative_to(job): p.read_bytes() for p in job.rglob("*") if p.is_file()}

    write_hydra_record(job, ["model.rdb=after", "data.num_workers=-1"])
    refused = JobStatus(job, ["model.rdb=after", "data.num_workers=-1"], enabled=True)
    refused.start()
    assert read_status(job)["status"] == "running" and not (job / "FAILED").exists()
    refused.rejected("train.log")

    now = {p.relative_to(job): p.read_bytes() for p in job.rglob("*") if p.is_file()}
    assert now.pop(Path("train.log")) == b"log of this launch\n"  # the log is a log
    kept.pop(Path("train.log"))
    assert now == kept  # the failure, its traceback and the .hydra record of that launch
    assert read_status(job)["attempts"] == 1


def test_a_refused_first_launch_removes_only_what_it_wrote(tmp_path: Path,
                                                           clock: Clock) -> None:
    job = tmp_path / "runs" / "data.batch_size=0"
    write_hydra_record(job, ["data.batch_size=0"])
    refused = JobStatus(job, ["data.batch_size=0"], enabled=True)
    refused.start()
    refused.rejected("train.log")
    assert not job.exists()

    write_hydra_record(job, ["data.batch_size=0"])
    (job / "notes.txt").write_text("someone else's")
    refused = JobStatus(job, ["data.batch_size=0"], enabled=True)
    refused.start()
    refused.rejected("train.log")
    assert sorted(p.name for p in job.rglob("*")) == ["notes.txt"]


def test_rejected_without_start_touches_nothing(tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "job"
    segment(job, clock, 1.0, "completed")
    before = (job / "job_status.json").read_bytes()
    JobStatus(job, [], enabled=True).rejected("train.log")
    assert (job / "job_status.json").read_bytes() == before


def test_a_silently_killed_segment_is_timed_by_its_last_metrics(tmp_path: Path,
                                                                 clock: Clock) -> None:
    """SIGKILL leaves ``running``: the relaunch counts that segment up to its last metrics."""
    job = tmp_path / "job"
    JobStatus(job, ["model.rdb=after"], enabled=True).start()
    killed_at = clock.now
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("step,val/psnr\n1,20\n")
    os.utime(job / "csv" / "metrics.csv", (killed_at + 75.0, killed_at + 75.0))
    clock.now += 900
    segment(job, clock, 20.0, "completed")

    record = read_status(job)
    lost, done = record["segments"]
    assert done["status"] == "completed"
    assert lost["status"] == "lost" and lost["estimated"] is True
    assert lost["wall_seconds"] == pytest.approx(75.0)
    assert record["wall_seconds"] == pytest.approx(95.0)
    assert "segments_without_wall_time" not in record


def test_a_silently_killed_segment_without_metrics_is_counted_as_unknown(
        tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "job"
    JobStatus(job, [], enabled=True).start()
    clock.now += 900
    segment(job, clock, 20.0, "completed")
    record = read_status(job)
    assert record["segments"][0]["wall_seconds"] is None
    assert record["wall_seconds"] == pytest.approx(20.0)
    assert record["segments_without_wall_time"] == 1


def test_resume_false_starts_the_record_over(tmp_path: Path, clock: Clock) -> None:
    job = tmp_path / "job"
    segment(job, clock, 100.0, "completed", **{"val/psnr": 20.0})
    restart = clock.now
    segment(job, clock, 5.0, "completed", overrides=["model.rdb=after", "resume=false"],
            **{"best/val/psnr": 9.0})
    record = read_status(job)
    assert record["started"] == restart and record["attempts"] == 1
    assert record["wall_seconds"] == pytest.approx(5.0)
    assert record["metrics"] == {"best/val/psnr": 9.0}


def test_a_record_from_before_segments_counts_as_one(tmp_path: Path, clock: Clock) -> None:
    """Folders written before this change (no ``segments``) keep their time on relaunch."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "job_status.json").write_text(
        '{"status": "completed", "started": 10.0, "ended": 70.0, "wall_seconds": 60.0, '
        '"global_step": 4, "metrics": {"val/psnr": 20.0}}')
    segment(job, clock, 2.0, "completed", **{"best/val/psnr": 20.0})
    record = read_status(job)
    assert record["started"] == 10.0 and record["attempts"] == 2
    assert record["wall_seconds"] == pytest.approx(62.0)
    assert record["metrics"] == {"val/psnr": 20.0, "best/val/psnr": 20.0}


def test_compare_times_a_running_resumed_job_over_its_segments(tmp_path: Path,
                                                               clock: Clock) -> None:
    """Before the current segment ends, the table adds it up to its last metrics write."""
    sweep = tmp_path / "sweep"
    job = sweep / "model.rdb=after"
    segment(job, clock, 120.0, "interrupted")
    JobStatus(job, ["model.rdb=after"], enabled=True).start()  # still going
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("step,val/psnr\n1,20\n3,21\n")
    os.utime(job / "csv" / "metrics.csv", (clock.now + 60.0, clock.now + 60.0))
    (only,) = collect(sweep).jobs
    assert only.status == "running"  # its pid is this test's, alive
    assert only.values["wall_s"] == pytest.approx(180.0)


# ----------------------------------------------------------------------------- SIGTERM


def test_the_sigterm_handler_lives_only_while_the_job_runs(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    status = JobStatus(tmp_path / "job", [], enabled=True)
    status.start()
    try:
        assert signal.getsignal(signal.SIGTERM) is not before
    finally:
        status.completed(summary(1))
    assert signal.getsignal(signal.SIGTERM) is before
    # A launcher that ignores SIGTERM keeps it ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        status = JobStatus(tmp_path / "other", [], enabled=True)
        status.start()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        status.completed(summary(1))
    finally:
        signal.signal(signal.SIGTERM, before)


def run_until_ready(script: str, job: Path) -> subprocess.Popen[str]:
    """Start ``script`` (job folder as argv[1]) and wait until it prints ``ready``."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(job)],
                            cwd=REPO, env=subprocess_env(PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"script did not get ready: {line}{out}\n{err}")
    return proc


# train.py's structure around a pre-flight check that takes a while.
TRAIN_PY_LIKE = """
    import sys, time
    from sweeps.job_status import JobStatus
    status = JobStatus(sys.argv[1], ["model.rdb=after"], enabled=True)
    try:
        status.start()
        print("ready", flush=True)
        time.sleep(60)  # the pre-flight check: Lightning has no SIGTERM handler yet
    except BaseException as error:
        status.interrupted(error)
        raise
    print("not reached", flush=True)
"""


def test_sigterm_before_training_is_recorded_and_exits_143(tmp_path: Path) -> None:
    job = tmp_path / "job"
    proc = run_until_ready(TRAIN_PY_LIKE, job)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "not reached" not in out
    record = read_status(job)
    assert record["status"] == "interrupted", record
    assert record["error_type"] == "Terminated" and "SIGTERM" in record["error"]
    assert record["segments"][-1]["status"] == "interrupted"
    assert record["wall_seconds"] > 0


def test_a_forked_worker_dies_on_sigterm_without_writing_the_record(tmp_path: Path) -> None:
    """Cache and loader workers inherit the handler; the job's record is not theirs to write."""
    job = tmp_path / "job"
    proc = run_until_ready("""
        import multiprocessing, os, signal, sys, time
        from sweeps.job_status import JobStatus
        JobStatus(sys.argv[1], [], enabled=True).start()
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        worker.start()
        print("ready", flush=True)
        time.sleep(0.5)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(30)
        print(worker.exitcode, flush=True)
    """, job)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == [str(-signal.SIGTERM)]  # killed by the signal, as by default
    assert read_status(job)["status"] == "running"  # the parent's job goes on


def test_sigterm_outside_any_try_is_still_recorded(tmp_path: Path) -> None:
    """The handler writes the record itself: code that catches nothing still leaves a trace."""
    job = tmp_path / "job"
    proc = run_until_ready("""
        import sys, time
        from sweeps.job_status import JobStatus
        JobStatus(sys.argv[1], [], enabled=True).start()
        print("ready", flush=True)
        time.sleep(60)
    """, job)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert read_status(job)["status"] == "interrupted"


def test_lightning_keeps_its_own_sigterm_handling_during_fit(tmp_path: Path) -> None:
    """Lightning's signal connector (the real one) chains ours: during fit ours stands aside.

    Lightning then finishes the step, saves and raises SIGTERMException (train.py: exit 143);
    after fit it restores our handler, which again answers a SIGTERM with a record and 143.
    """
    job = tmp_path / "job"
    proc = run_until_ready("""
        import os, signal, sys, time
        from types import SimpleNamespace
        from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
        from sweeps.job_status import JobStatus, read_status
        status = JobStatus(sys.argv[1], [], enabled=True)
        status.start()
        trainer = SimpleNamespace(
            _accelerator_connector=SimpleNamespace(cluster_environment=None),
            strategy=SimpleNamespace(launcher=None), local_rank=0, world_size=1)
        connector = _SignalConnector(trainer)
        connector.register_signal_handlers()  # what Trainer.fit does first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        assert connector.received_sigterm, "Lightning's handler did not run"
        assert read_status(sys.argv[1])["status"] == "running", "ours did not stand aside"
        connector.teardown()  # the end of fit
        print("ready", flush=True)
        time.sleep(60)
    """, job)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert read_status(job)["status"] == "interrupted"


def test_a_handler_installed_before_the_job_decides(tmp_path: Path) -> None:
    """Submitit (the SLURM launcher) logs SIGTERM and lets the job go on: so does the record."""
    job = tmp_path / "job"
    proc = run_until_ready("""
        import os, signal, sys, time
        from types import SimpleNamespace
        from sweeps.job_status import JobStatus, read_status
        seen = []
        def bypass(signum, frame):
            seen.append(signum)
        signal.signal(signal.SIGTERM, bypass)
        status = JobStatus(sys.argv[1], [], enabled=True)
        status.start()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        assert seen == [signal.SIGTERM], seen
        assert read_status(sys.argv[1])["status"] == "running"
        status.completed(SimpleNamespace(metrics={}, global_step=1, wall_seconds=1.0))
        assert signal.getsignal(signal.SIGTERM) is bypass, "the launcher's handler is not back"
        print("ready", flush=True)
    """, job)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert read_status(job)["status"] == "completed"

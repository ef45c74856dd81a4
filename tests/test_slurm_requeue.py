"""The SLURM requeue's parts that need no training: the environment, the job id, scontrol."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from darkraw.slurm_requeue import requeue_job, slurm_environment_plugins, slurm_job_id

SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "quickstart", "SLURM_JOB_ID": "4242",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


@pytest.fixture
def slurm_task(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)


def fake_scontrol(folder: Path, monkeypatch: pytest.MonkeyPatch, status: int,
                  message: str = "") -> Path:
    """SLURM's scontrol, absent here: notes its arguments and exits with ``status``."""
    folder.mkdir()
    calls = folder / "calls"
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "{message}" >&2\nexit {status}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_lightnings_own_requeue_is_off_under_slurm_only(slurm_task: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    [environment] = slurm_environment_plugins([])
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    # A cluster environment the user configured is theirs.
    assert slurm_environment_plugins([LightningEnvironment()]) == []
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc + a shell: not a SLURM task
    assert slurm_environment_plugins([]) == []


def test_an_array_task_is_requeued_by_its_array_name(slurm_task: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert slurm_job_id() == "4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert slurm_job_id() == "4240_2"


def test_requeue_runs_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    calls = fake_scontrol(tmp_path / "bin", monkeypatch, 0)
    assert requeue_job("4240_2")
    assert calls.read_text().split() == ["requeue", "4240_2"]
    assert "darkraw: requeued SLURM job 4240_2" in capsys.readouterr().err


def test_a_failed_requeue_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake_scontrol(tmp_path / "bin", monkeypatch, 1, "Requested operation is presently disabled")
    assert not requeue_job("4242")
    err = capsys.readouterr().err
    assert ("darkraw: error: `scontrol requeue 4242` failed (exit status 1: Requested operation "
            "is presently disabled), so the job is not requeued. Submit it again" in err)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    assert not requeue_job("4242")
    assert "`scontrol requeue 4242` failed (" in capsys.readouterr().err

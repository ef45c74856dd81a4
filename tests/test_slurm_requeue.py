"""The SLURM requeue's parts that need no training: the environment, the job id, scontrol."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from darkraw.slurm_requeue import requeue_job, slurm_environment_plugins, slurm_job_id
from tests.helpers import SLURM_TASK_ENV, stand_in_scontrol


@pytest.fixture
def slurm_task(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SLURM_TASK_ENV.items():
        monkeypatch.setenv(name, value)


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
    path, calls = stand_in_scontrol(tmp_path / "bin")
    monkeypatch.setenv("PATH", path)
    assert requeue_job("4240_2")
    assert calls.read_text().split() == ["requeue", "4240_2"]
    assert "darkraw: requeued SLURM job 4240_2" in capsys.readouterr().err


def test_a_failed_requeue_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = stand_in_scontrol(tmp_path / "bin", 1, "Requested operation is presently disabled")
    monkeypatch.setenv("PATH", path)
    assert not requeue_job("4242")
    err = capsys.readouterr().err
    assert ("darkraw: error: `scontrol requeue 4242` failed (exit status 1: Requested operation "
            "is presently disabled), so the job is not requeued. Submit it again" in err)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    assert not requeue_job("4242")
    assert "`scontrol requeue 4242` failed (" in capsys.readouterr().err

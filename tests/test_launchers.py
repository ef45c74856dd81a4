"""Cluster launchers from the same configs: SLURM (submitit) job scripts, submitit-local sweeps.

The SLURM tests run the real hydra-submitit launcher in-process up to ``sbatch``, which a fake
script on PATH answers, so they check the job script SLURM would receive, not just the config.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

import darkraw.resolvers  # noqa: F401  (the configs' folder resolvers)
from tests.helpers import (
    FAST_TRAIN,
    REPO,
    fixture_data_overrides,
    login_node_path,
    run_entry_point,
    start_train_py_process_group,
)

SLURM_OVERRIDES = [
    "hydra/launcher=slurm",
    "trainer=ddp",
    "trainer.devices=4",
    "trainer.num_nodes=2",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=600",
    "hydra.launcher.mem_gb=120",
]


def compose_train(overrides: list[str]) -> DictConfig:
    """The config ``python train.py <overrides>`` composes, Hydra's own settings included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3",
                               job_name="train"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_takes_tasks_gpus_and_nodes_from_the_trainer() -> None:
    cfg = compose_train(SLURM_OVERRIDES)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == cfg.trainer.devices == 4
    assert launcher["nodes"] == cfg.trainer.num_nodes == 2
    assert launcher["partition"] == "gpu"
    assert launcher["timeout_min"] == 600 and launcher["mem_gb"] == 120
    # darkraw requeues (SIGUSR1, darkraw/slurm_requeue.py); submitit's own requeue stays off.
    assert launcher["additional_parameters"]["signal"] == "USR1@90"
    assert launcher["additional_parameters"]["requeue"] is True
    assert launcher["max_num_timeout"] == 0
    assert launcher["name"] == cfg.name
    assert cfg.trainer.strategy._target_ == "darkraw.distributed.HydraDDPStrategy"


def _fake_slurm_bin(folder: Path) -> Path:
    """``srun`` (submitit only checks it exists) and an ``sbatch`` that keeps the job script."""
    folder.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": '#!/bin/sh\ncp "$1" "$FAKE_SBATCH_COPY"\necho "Submitted batch job 4242"\n',
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def _task(cfg: DictConfig) -> None:  # pragma: no cover - never runs: sbatch is fake
    raise AssertionError("the fake sbatch does not run jobs")


def test_slurm_sweep_is_one_job_array_with_one_task_per_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit
    from submitit.core.utils import DelayedSubmission

    bin_dir = _fake_slurm_bin(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_COPY", str(tmp_path / "job.sbatch"))
    # The jobs never run: each "result" is the job id.
    monkeypatch.setattr(submitit.SlurmJob, "results", lambda self: [self.job_id])

    task_overrides = ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                      f"paths.root_dir={tmp_path}"]
    hydra_overrides = [o for o in SLURM_OVERRIDES if o.startswith("hydra")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3",
                               job_name="train"):
        cfg = compose("train", overrides=[*hydra_overrides, *task_overrides, "hydra.mode=MULTIRUN"],
                      return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=_task, config=cfg
        )
        jobs = [[*task_overrides, "model.rdb=after"], [*task_overrides, "model.rdb=before"]]
        assert launcher.launch(jobs, initial_job_idx=0) == ["4242_0", "4242_1"]

    script = (tmp_path / "job.sbatch").read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))
    assert flags["array"] == "0-1%2"  # the sweep: one array job, one element per job
    assert flags["ntasks-per-node"] == "4" and flags["gpus-per-node"] == "4"
    assert flags["nodes"] == "2"
    assert flags["partition"] == "gpu" and flags["time"] == "600" and flags["mem"] == "120GB"
    assert flags["signal"] == "USR1@90"  # replaces submitit's USR2: darkraw requeues
    assert "requeue" in flags and flags["job-name"] == "quickstart"
    assert "srun" in script and "submitit.core._submit" in script

    # What a (re)started array element runs: the pickled launcher recomposes its job's config.
    # The sweep folder comes from ${now:...}; it must not move when a requeued job starts later.
    sweep_dir = str(cfg.hydra.sweep.dir)
    time.sleep(1.1)
    pickle = Path(sweep_dir) / ".submitit" / "4242_1" / "4242_1_submitted.pkl"
    delayed = DelayedSubmission.load(pickle)
    job_launcher, (overrides, *_rest) = delayed.function, delayed.args
    job_cfg = job_launcher.hydra_context.config_loader.load_sweep_config(
        job_launcher.config, list(overrides)
    )
    assert str(job_cfg.hydra.sweep.dir) == sweep_dir
    assert job_cfg.model.rdb == "before" and job_cfg.trainer.devices == 4
    assert job_cfg.hydra.mode.name == "MULTIRUN"


def test_slurm_tasks_that_do_not_match_devices_fail_loudly(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SLURM task per node but devices=2: Lightning must refuse, not train on one device."""
    import lightning as L

    from darkraw.distributed import HydraDDPStrategy, external_launcher

    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
                        "SLURM_JOB_NAME": "quickstart", "SLURM_JOB_ID": "4242",
                        "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    assert external_launcher() == "SLURM"
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=HydraDDPStrategy(), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="ntasks-per-node=1"):
        trainer.strategy.launcher.launch(lambda: None)


@pytest.mark.slow
def test_local_launcher_runs_a_two_job_sweep(synthetic_sid: Path, tmp_path: Path) -> None:
    proc = run_entry_point(
        "train.py", "-m", "hydra/launcher=local", "data=sid", f"data.root={synthetic_sid}",
        f"paths.root_dir={tmp_path}", *FAST_TRAIN, "trainer.max_steps=2",
        "preflight.enabled=false", "model.rdb=after,before", timeout=240,
    )
    sweeps = list((tmp_path / "outputs" / "quickstart" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, proc.stdout[-3000:]
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2, [p.name for p in sweep.iterdir()]
    for job, rdb in zip(jobs, ("after", "before"), strict=True):
        assert f"model.rdb={rdb}" in job.name
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").read_text().count("\n") > 1
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        assert OmegaConf.load(job / ".hydra" / "config.yaml").model.rdb == rdb
    # submitit ran each job as its own process, with its own logs.
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2


@pytest.mark.slow
def test_ctrl_c_of_a_local_sweep_saves_every_job_and_says_how_to_continue(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """submitit's controllers answered Ctrl-C with a second SIGINT and SIGKILL: the jobs died
    before saving (their records still said running), under a KeyboardInterrupt traceback."""
    args = ["-m", "hydra/launcher=local", *fixture_data_overrides(synthetic_sid, tmp_path / "c"),
            "data.progress=false", "data.cache_workers=1", f"paths.root_dir={tmp_path}",
            # Without FAST_TRAIN's own two: a key given twice adds a warning to stderr.
            *[a for a in FAST_TRAIN
              if not a.startswith(("trainer.max_steps=", "trainer.val_check_interval="))],
            "trainer.max_steps=100000", "trainer.val_check_interval=100000",
            "logger=csv", "callbacks.image_panel=null", "preflight.enabled=false",
            "callbacks.last_checkpoint.every_n_train_steps=100000", "model.rdb=after,before"]
    err = tmp_path / "sweep.stderr"
    proc = start_train_py_process_group(args, tmp_path / "sweep.stdout", err)
    deadline = time.monotonic() + 240
    try:
        while len([p for p in tmp_path.glob("outputs/quickstart/multirun/*/*/*/csv/metrics.csv")
                   if "train/loss" in p.read_text() and p.read_text().count("\n") > 2]) < 2:
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs did not start training in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr_text = err.read_text()
    assert proc.returncode == 130, stderr_text[-3000:]
    assert "Traceback" not in stderr_text and "KeyboardInterrupt" not in stderr_text
    [sweep] = list((tmp_path / "outputs" / "quickstart" / "multirun").glob("*/*"))
    assert stderr_text.strip().splitlines() == [
        "darkraw: sweep stopped by Ctrl-C: 2 of 2 jobs interrupted, each with its last.ckpt "
        "saved at the step it reached",
        f"  continue it: the same command with hydra.sweep.dir={sweep} (each job resumes from "
        "its last.ckpt)"]
    logs = {path.read_text() for path in sweep.glob(".submitit/*/*_log.err")}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        assert json.loads((job / "job_status.json").read_text())["status"] == "interrupted"
        step = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)["global_step"]
        # Saved at Ctrl-C, at the step the job says it stopped at (no periodic save ran).
        assert step >= 1 and any(f"stopped by Ctrl-C at step {step}; resume point {job}" in log
                                 for log in logs), logs
    # Each job's own line names the sweep folder too: the same -m command alone would start a
    # new sweep (as it would under the basic launcher, where this line is all the user sees).
    assert all(f"adding hydra.sweep.dir={sweep} so that it continues this sweep" in log
               for log in logs if "stopped by Ctrl-C" in log), logs


@pytest.mark.parametrize(("launcher", "sweep"), [("slurm", "trainer.devices=2,4"),
                                                ("slurm", "trainer.num_nodes=range(1,3)"),
                                                ("local", "trainer.devices=2,4")])
def test_sweeping_the_gpu_request_is_refused_before_launching(tmp_path: Path, launcher: str,
                                                              sweep: str) -> None:
    """The launcher is configured once per sweep: every job would get the same GPUs."""
    proc = run_entry_point("train.py", "-m", f"hydra/launcher={launcher}", "trainer=ddp", sweep,
                           "model.rdb=after,before", f"paths.root_dir={tmp_path}", check=False,
                           timeout=120, PATH=login_node_path(tmp_path / "bin"))
    key = sweep.split("=")[0]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"darkraw: error: {sweep}: {key} cannot be swept with hydra/launcher={launcher}"
            in proc.stderr)
    assert f"`-m ... {key}=2`" in proc.stderr and "Traceback" not in proc.stderr

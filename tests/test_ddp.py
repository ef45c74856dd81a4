"""DDP under Hydra: how extra ranks are started, requeue checkpoints, and a real 2-rank CPU run."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

import darkraw.resolvers  # noqa: F401  (the configs' folder resolvers)
from darkraw.distributed import (
    HYDRA_DDP_TARGET,
    adapt_strategy,
    rank_command,
    resume_checkpoint,
)
from tests.helpers import (
    FAST_TRAIN,
    REPO,
    run_entry_point,
    stand_in_scontrol,
    start_train_py_process_group,
    subprocess_env,
    wait_for_run_file,
)


@pytest.mark.parametrize(
    "strategy,expected",
    [("ddp", {"_target_": HYDRA_DDP_TARGET, "find_unused_parameters": False}),
     ("ddp_find_unused_parameters_true",
      {"_target_": HYDRA_DDP_TARGET, "find_unused_parameters": True}),
     ("auto", "auto"), ("ddp_spawn", "ddp_spawn")],
)
def test_lightning_ddp_string_becomes_the_job_aware_strategy(strategy: str,
                                                             expected: object) -> None:
    trainer_cfg = OmegaConf.create({"strategy": strategy})
    note = adapt_strategy(trainer_cfg)
    assert OmegaConf.to_container(trainer_cfg)["strategy"] == expected
    assert (note is None) == (strategy == expected)


def test_trainer_ddp_config_instantiates_the_job_aware_strategy() -> None:
    from hydra.utils import instantiate

    from darkraw.distributed import HydraDDPStrategy

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=ddp"])
    assert cfg.trainer.devices == 2 and cfg.trainer.num_nodes == 1
    assert isinstance(instantiate(cfg.trainer.strategy), HydraDDPStrategy)


def test_extra_ranks_rerun_this_job_not_the_sweep(tmp_path: Path) -> None:
    """In a multirun job, rank k re-runs the job's own overrides in the job's folder, no -m."""
    GlobalHydra.instance().clear()
    task = ["trainer=ddp", "optimizer.lr=0.0002", "data.root='/data/a b,c'"]
    hydra_overrides = ["hydra.mode=MULTIRUN", "hydra/launcher=local",
                       "hydra.sweep.subdir=job${hydra.job.num}", "hydra.verbose=true"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3",
                               job_name="train"):
        cfg = compose("train", overrides=[*hydra_overrides, *task], return_hydra_config=True)
    job_dir = tmp_path / "multirun" / "lr=0.0002,x=1"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = rank_command(1)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert command[1] == str(REPO / "train.py")  # pytest's argv[0] is not the Hydra app
    assert command[2:4] == ["--config-name", "train"]
    assert command[4:7] == task
    assert "-m" not in command and "--multirun" not in command
    assert not any(a.startswith(("hydra/launcher", "hydra.sweep")) for a in command)
    # A single run, even where the config itself says MULTIRUN (+sweep=rdb does).
    assert [a for a in command if a.startswith("hydra.mode")] == ["hydra.mode=RUN"]
    assert "hydra.verbose=true" in command
    assert f'hydra.run.dir="{job_dir}"' in command
    assert command[-2:] == ["hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"]
    assert cwd == str(tmp_path)
    # The quoted folder survives Hydra's override parser (it contains '=' and ',').
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f'hydra.run.dir="{job_dir}"')
    assert parsed.value() == str(job_dir)


def test_resume_prefers_a_newer_slurm_requeue_checkpoint(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(b"last")
    assert resume_checkpoint("auto", ckpt_dir, tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"hpc")
    os.utime(last, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    assert resume_checkpoint("auto", ckpt_dir, tmp_path) == str(hpc)
    assert resume_checkpoint(True, ckpt_dir, tmp_path) == str(hpc)
    os.utime(last, None)  # a validation after the requeue wrote last.ckpt again
    assert resume_checkpoint("auto", ckpt_dir, tmp_path) == str(last)
    # Starting over must also remove what Lightning would load by itself under SLURM, and move
    # the old run's checkpoints out of the new run's way (kept, not deleted).
    (ckpt_dir / "best-step0000400-psnr20.44.ckpt").write_bytes(b"old best")
    assert resume_checkpoint("false", ckpt_dir, tmp_path) is None
    assert not hpc.exists() and not ckpt_dir.exists()
    (moved,) = tmp_path.glob("replaced-*")
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == [
        "best-step0000400-psnr20.44.ckpt", "last.ckpt"]
    # A second start-over in the same second keeps both sets apart.
    ckpt_dir.mkdir()
    last.write_bytes(b"second run")
    assert resume_checkpoint("false", ckpt_dir, tmp_path) is None
    assert len(list(tmp_path.glob("replaced-*"))) == 2
    # Nothing to move: an empty folder (or none) stays as it is.
    ckpt_dir.mkdir()
    assert resume_checkpoint("false", ckpt_dir, tmp_path) is None and ckpt_dir.is_dir()


def test_a_requeued_slurm_job_resumes_even_with_resume_false(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM requeues a job with its own command line: resume=false would start it over at every
    time limit or preemption, deleting the requeue checkpoint written for it."""
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(b"last")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"hpc")
    os.utime(last, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_checkpoint("false", ckpt_dir, tmp_path) == str(hpc)
    assert last.is_file() and hpc.is_file() and not list(tmp_path.glob("replaced-*"))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the job's first start: resume=false holds
    assert resume_checkpoint("false", ckpt_dir, tmp_path) is None
    assert not hpc.exists() and list(tmp_path.glob("replaced-*"))


@pytest.mark.slow
def test_two_cpu_ranks_train_one_run(synthetic_sid: Path, tmp_path: Path) -> None:
    """trainer=ddp with 2 gloo ranks: both train, each on its own shard, and one run comes out."""
    from lightning_modules.module import RestorationModule

    run_entry_point(
        "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=sid",
        f"data.root={synthetic_sid}", f"paths.root_dir={tmp_path}", *FAST_TRAIN,
        "data.patches_per_epoch=4", "preflight.enabled=false",
        # A loader worker per rank: it starts iterating before training (and RankReport) does.
        "data.num_workers=1",
        # A NaN in rank 1's batch at step 1 only: every rank must skip that step together.
        "+callbacks.poison._target_=tests.health_helpers.RankPoison", timeout=240,
    )
    runs = list((tmp_path / "outputs").glob("*/runs/*"))
    assert len(runs) == 1
    run = runs[0]

    with (run / "csv" / "metrics.csv").open() as handle:
        skipped = [float(r["train/nonfinite_skipped"]) for r in csv.DictReader(handle)
                   if r.get("train/nonfinite_skipped")]
    assert skipped[-1] == 1.0
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())

    # Both ranks ran, in the same folder, each with half of the global batch of 2.
    reports = [json.loads((run / "ranks" / f"rank{k}.json").read_text()) for k in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["global_rank"] == rank and report["world_size"] == 2
        assert report["batch_size_per_rank"] == 1 and report["global_batch_size"] == 2
        assert report["sampler"] == "PatchStreamSampler"
        assert report["cluster_environment"] == "LightningEnvironment"
    # Each step's global batch is split between the ranks: step 0 is samples 0 (rank 0) and 1
    # (rank 1), step 1 samples 2 and 3: the samples a one-device run trains on.
    assert [report["first_indices"][:2] for report in reports] == [[0, 2], [1, 3]]
    assert "DDP rank 0/2" in (run / "train.log").read_text()
    assert "DDP rank 1/2" in (run / "train_ddp_process_1.log").read_text()

    # Rank 0 alone wrote the results: one of each, nowhere else.
    assert [p.relative_to(run) for p in tmp_path.rglob("metrics.csv")] == [Path("csv/metrics.csv")]
    assert [p.relative_to(run) for p in tmp_path.rglob("last.ckpt")] == [
        Path("checkpoints/last.ckpt")
    ]
    assert len(list(tmp_path.rglob("offline-run-*"))) == 1
    assert len(list(run.glob("wandb/offline-run-*"))) == 1
    assert list(tmp_path.rglob(".hydra")) == [run / ".hydra"]
    assert "val/psnr" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=False)
    assert checkpoint["global_step"] == 4
    module = RestorationModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt",
                                                    map_location="cpu")
    with torch.no_grad():
        assert module(torch.rand(1, 4, 32, 32)).shape == (1, 3, 64, 64)


@pytest.mark.slow
def test_extra_rank_of_a_named_sweep_job_runs_in_that_jobs_folder(synthetic_sid: Path,
                                                                  tmp_path: Path) -> None:
    """``+sweep=rdb`` sets MULTIRUN in its config: rank 1 must still run the job, not a sweep.

    It used to run as a sweep of its own in a new ``outputs/multirun/<now>/`` folder, where it
    found no ``last.ckpt``: relaunching the sweep then hung, rank 0 resuming and rank 1 not.
    """
    sweep = tmp_path / "sweep"
    run_entry_point(
        "train.py", "+sweep=rdb", "model.rdb=before", "trainer=ddp", "trainer.devices=2",
        "data=sid", f"data.root={synthetic_sid}", f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}", *FAST_TRAIN, "trainer.max_steps=2", "preflight.enabled=false",
        timeout=240,
    )
    (job,) = [p.parent for p in sweep.glob("*/job_status.json")]
    assert json.loads((job / "ranks" / "rank1.json").read_text())["global_rank"] == 1
    assert (job / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "outputs").exists()  # no stray sweep folder of rank 1's


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_slurm_tasks_on_two_nodes_are_joined_into_one_run(synthetic_sid: Path,
                                                          tmp_path: Path) -> None:
    """What `srun` does for nodes=2, ntasks-per-node=1: two processes, each running train.py.

    Each composes the same override-named folder; Lightning detects SLURM and joins them (it
    starts no process of its own); both nodes' first process builds the data cache, serialised
    by the cache's lock.
    """
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
            "data=sid", f"data.root={synthetic_sid}", f"paths.root_dir={tmp_path}", *FAST_TRAIN,
            "trainer.max_steps=2", "data.patches_per_epoch=4", "preflight.enabled=false"]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "quickstart",
             "SLURM_NODELIST": "localhost", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=subprocess_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                               SLURM_NODEID=str(rank)),
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-6000:]

    runs = list((tmp_path / "outputs").glob("*/runs/*"))
    assert len(runs) == 1
    run = runs[0]
    for rank in (0, 1):
        report = json.loads((run / "ranks" / f"rank{rank}.json").read_text())
        assert report["cluster_environment"] == "SLURMEnvironment"
        assert report["node_rank"] == rank and report["local_rank"] == 0
        assert report["world_size"] == 2 and report["batch_size_per_rank"] == 1
    assert not list(run.glob("*_ddp_process_*.log"))  # Lightning started no rank itself
    assert len(list(tmp_path.rglob("offline-run-*"))) == 1
    assert [p.relative_to(run) for p in tmp_path.rglob("last.ckpt")] == [
        Path("checkpoints/last.ckpt")
    ]


@pytest.mark.slow
def test_slurms_time_limit_signal_stops_every_rank_at_one_step_and_requeues_once(
        synthetic_sid: Path, tmp_path: Path) -> None:
    """SLURM signals each task on its own: a rank that stopped a step before the other left
    it waiting in a collective until the time limit killed both, unsaved."""
    path, calls = stand_in_scontrol(tmp_path / "bin")
    max_steps = 8
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
            "data=sid", f"data.root={synthetic_sid}", f"paths.root_dir={tmp_path}",
            *[a for a in FAST_TRAIN
              if not a.startswith(("trainer.max_steps=", "trainer.val_check_interval="))],
            f"trainer.max_steps={max_steps}", "trainer.val_check_interval=6", "logger=csv",
            "callbacks.image_panel=null", "callbacks.last_checkpoint.every_n_train_steps=2",
            "data.patches_per_epoch=4", "preflight.enabled=false"]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "quickstart",
             "SLURM_NODELIST": "localhost", "PATH": path}

    def launch(segment: str, **extra: str) -> list[tuple[subprocess.Popen[str], Path]]:
        port = str(_free_port())
        tasks = []
        for rank in (0, 1):
            log = tmp_path / f"{segment}_rank{rank}.log"
            with open(log, "w") as output:
                tasks.append((subprocess.Popen(
                    [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, text=True,
                    stdout=output, stderr=subprocess.STDOUT,
                    env=subprocess_env(**slurm, **extra, MASTER_PORT=port,
                                       SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                                       SLURM_NODEID=str(rank))), log))
        return tasks

    def finish(tasks: list[tuple[subprocess.Popen[str], Path]]) -> list[str]:
        try:
            for proc, _ in tasks:
                proc.wait(timeout=240)
        finally:
            for proc, _ in tasks:
                proc.kill()
        return [log.read_text() for _, log in tasks]

    first = launch("first")
    wait_for_run_file([proc for proc, _ in first], tmp_path, "checkpoints/last.ckpt",
                      first[0][1])
    # SLURM sends USR1 to every task, 90 s before the limit, each when it gets to it: the
    # extreme of that, rank 1 alone, must stop both ranks after the same step.
    first[1][0].send_signal(signal.SIGUSR1)
    outputs = finish(first)
    assert [proc.returncode for proc, _ in first] == [143, 143], outputs[0][-4000:]
    [last] = tmp_path.glob("outputs/*/runs/*/checkpoints/last.ckpt")
    stopped = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped < max_steps
    assert (f"darkraw: stopped by SLURM's time-limit signal at step {stopped}; resume point "
            f"{last} at step {stopped}." in outputs[0]), outputs[0][-4000:]
    assert "stopped by" not in outputs[1]  # one line for the job, from rank 0
    assert sum(out.count("stopped: saved") for out in outputs) == 1
    assert calls.read_text().splitlines() == ["requeue 4242"]

    requeued = launch("requeued", SLURM_RESTART_COUNT="1")
    outputs = finish(requeued)
    assert [proc.returncode for proc, _ in requeued] == [0, 0], outputs[0][-4000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == max_steps
    assert f"Restoring states from the checkpoint path at {last}" in outputs[0], outputs[0][-4000:]
    with (last.parent.parent / "csv" / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert steps == list(range(max_steps))  # every step trained and logged once


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "name", "status"), [(signal.SIGTERM, "SIGTERM", 143),
                                                     (signal.SIGINT, "Ctrl-C", 130)])
def test_a_stop_signal_to_a_ddp_job_stops_every_rank_at_one_step(
        synthetic_sid: Path, tmp_path: Path, sig: signal.Signals, name: str, status: int) -> None:
    """Preemption, ``kill -- -PGID`` and a terminal's Ctrl-C signal every rank, each when it
    gets to it: a 2-rank job given SIGTERM hung, unsaved, until it was killed."""
    max_steps = 6
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=sid",
            f"data.root={synthetic_sid}", f"paths.root_dir={tmp_path}",
            *[a for a in FAST_TRAIN
              if not a.startswith(("trainer.max_steps=", "trainer.val_check_interval="))],
            f"trainer.max_steps={max_steps}", "trainer.val_check_interval=4", "logger=csv",
            "callbacks.image_panel=null", "callbacks.last_checkpoint.every_n_train_steps=2",
            "data.patches_per_epoch=4", "preflight.enabled=false"]
    err = tmp_path / "stderr"
    proc = start_train_py_process_group(args, tmp_path / "stdout", err)
    try:
        wait_for_run_file(proc, tmp_path, "checkpoints/last.ckpt", err)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.read_text()
    assert proc.returncode == status, text[-3000:]
    [last] = tmp_path.glob("outputs/*/runs/*/checkpoints/last.ckpt")
    stopped = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert stopped < max_steps
    assert text.count(f"darkraw: stopped by {name} at step {stopped}; resume point {last} at "
                      f"step {stopped}.") == 1, text[-3000:]
    run = last.parent.parent
    assert json.loads((run / "job_status.json").read_text())["status"] == "interrupted"
    # That a DDP job resumes exactly from such a stop: the SLURM time-limit test above.

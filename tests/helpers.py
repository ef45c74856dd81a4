"""Helpers to run the real entry points in subprocesses, as users do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lightning_modules.network import DarkRestorationNet

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def run_entry_point(script: str, *args: str, cwd: Path = REPO, timeout: float = 300,
                    check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python <script> <args>`` and return it; on failure show its output."""
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, env=subprocess_env(**env),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n"
            f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def popen_ctrl_c_able(command: list[str], **kwargs: object) -> subprocess.Popen[str]:
    """``command`` from the repository, with SIGINT acting as Ctrl-C in it.

    A child inherits an *ignored* SIGINT (e.g. under a shell's background job), and Python then
    never raises KeyboardInterrupt: the Ctrl-C tests would test nothing.
    """
    return subprocess.Popen(command, cwd=REPO, env=subprocess_env(), text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)  # type: ignore[call-overload]


def start_train_py_process_group(args: list[str], out: Path,
                                 err: Path) -> subprocess.Popen[str]:
    """train.py in its own process group, output in ``out`` and ``err`` (files: a full pipe
    would block it), so that ``os.killpg`` signals it as a whole: what Ctrl-C in a terminal, or
    SLURM, does."""
    with open(out, "w") as stdout, open(err, "w") as stderr:
        return popen_ctrl_c_able([sys.executable, str(REPO / "train.py"), *args],
                                 stdout=stdout, stderr=stderr, start_new_session=True)


# Overrides that make a real train.py run take seconds on 2 CPU cores.
FAST_TRAIN = (
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "model.train_metrics_every_n_steps=1",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.patch_size=192",
    "data.val_max_images=1",
)


# The generation parameters of the session's ``synthetic_sid`` fixture (tests/conftest.py). The
# synthetic data module regenerates its root when they differ from its config, which would
# silently rewrite the shared fixture: every test pointing at it passes them.
FIXTURE_SET = {"num_train_scenes": 3, "num_val_scenes": 1, "num_test_scenes": 1, "height": 256,
               "width": 320, "shots_per_scene": 1, "seed": 0}


def fixture_data_overrides(root: Path, cache_dir: Path | None = None) -> list[str]:
    """train.py overrides that point the synthetic data config at the fixture's set."""
    overrides = [f"data.root={root}"]
    overrides += [f"data.synthetic.{key}={value}" for key, value in FIXTURE_SET.items()]
    if cache_dir is not None:
        overrides.append(f"data.cache_dir={cache_dir}")
    return overrides


def perturbed_net(rdb: str = "before") -> DarkRestorationNet:
    """A network whose magnitudes g no longer equal ||v|| and whose biases are not zero.

    At initialisation g == ||v|| and the biases are 0, which would let a wrong weight-norm fold
    or a wrong checkpoint mapping pass unnoticed.
    """
    net = DarkRestorationNet(rdb=rdb)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.add_(0.05 * torch.randn_like(param))
            else:
                param.mul_(1 + 0.3 * torch.randn_like(param))
    return net.eval()


def write_dng_with_levels(path: Path, mosaic: np.ndarray, *, black_level: int,
                          white_level: int) -> Path:
    """An RGGB DNG with levels ``write_bayer_dng`` refuses (white not above black): what a
    damaged file, or a camera whose levels LibRaw misreads, hands the decoder."""
    from pidng.core import RAW2DNG

    from datamodules.dng import _tags, atomic_write_bytes

    tags = _tags(*mosaic.shape, exposure_time=0.1, black_level=black_level,
                 white_level=white_level, cfa_pattern="RGGB", neutral=np.array([0.5, 1.0, 0.6]),
                 iso=100)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    return atomic_write_bytes(path, bytes(writer.convert(mosaic.astype(np.uint16))))


def login_node_path(folder: Path) -> str:
    """A PATH with a SLURM login node's sbatch and srun in ``folder`` (found, never run)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun"):
        (folder / name).write_text("#!/bin/sh\nexit 1\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def recorded_run(folder: Path, overrides: list[str], checkpoint: bool = True) -> Path:
    """A run folder as train.py leaves it, for the look-ups that read one: its Hydra overrides
    and (with ``checkpoint``) a ``checkpoints/last.ckpt`` (its bytes are not read)."""
    from omegaconf import OmegaConf

    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return folder


#: A SLURM task's environment: one task, the job 4242 (Lightning detects SLURM from it).
SLURM_TASK_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
                  "SLURM_JOB_NAME": "quickstart", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                  "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def stand_in_scontrol(folder: Path, status: int = 0, message: str = "",
                      then: str = "") -> tuple[str, Path]:
    """SLURM's scontrol, which does not exist here: it notes its arguments (one call a line in
    the returned file), prints ``message``, runs the shell line ``then`` (what SLURM does next,
    e.g. SIGTERM to the job) and exits with ``status``. Returns a PATH with it first."""
    folder.mkdir(parents=True, exist_ok=True)
    calls = folder / "scontrol.calls"
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "{message}" >&2\n{then}\n'
                      f"exit {status}\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}", calls


def wait_for_run_file(procs: subprocess.Popen[str] | list[subprocess.Popen[str]], root: Path,
                      name: str, err: Path, timeout: float = 240) -> None:
    """Until the training process(es) ``procs`` (paths.root_dir ``root``) have written the run
    folder's file ``name`` (``checkpoints/last.ckpt``, ``job_status.json``); fails at once,
    with ``err``'s end, when one of them ends first."""
    procs = procs if isinstance(procs, list) else [procs]
    deadline = time.monotonic() + timeout
    while not list(root.glob(f"outputs/*/runs/*/{name}")):
        assert all(proc.poll() is None for proc in procs), err.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {name} in {timeout:.0f} s"
        time.sleep(0.02)

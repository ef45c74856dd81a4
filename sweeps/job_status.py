"""What each training job leaves about its own fate: ``job_status.json`` (and ``FAILED``).

A sweep is only comparable if every job says how it ended. Metrics files alone cannot tell a
job that failed at step 0 from one that is still running or was killed, and Hydra keeps a failed
job's traceback only in memory (its BasicSweeper re-raises the first failure *after* the batch,
so the sweep exits 1 and the other jobs' results look suspect). So ``train.py`` records, in the
job's own folder:

- ``job_status.json``: ``status`` = ``running`` at start, then ``completed`` / ``failed`` /
  ``interrupted``; start and end times, wall seconds, steps, final metrics, overrides, the error.
  A job killed from outside (OOM killer, SLURM time limit) stays ``running`` forever: the
  comparison reports it as ``incomplete``.
- ``traceback.txt`` and an empty ``FAILED`` marker for a failed job (``ls */FAILED`` finds them).

Only rank 0 writes: under DDP the extra ranks run in the same folder.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATUS_FILE = "job_status.json"
FAILED_MARKER = "FAILED"
TRACEBACK_FILE = "traceback.txt"

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"

#: Environment variables that carry a process's global rank (Lightning, torchrun, SLURM, LSF/MPI).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_rank_zero() -> bool:
    """True unless the environment says this process is an extra rank of a DDP job."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value) == 0
            except ValueError:
                continue
    return True


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null (json.dump would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    # Write-then-rename: a reader (the comparison, run while a sweep is going) never sees half.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_status(job_dir: str | Path) -> dict[str, Any] | None:
    """The job's ``job_status.json`` as a dict, or None when missing or unreadable."""
    path = Path(job_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class JobStatus:
    """Writes a job's status file through its life; every method is a no-op off rank 0."""

    def __init__(self, output_dir: str | Path, overrides: list[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = is_rank_zero() if enabled is None else enabled
        self.started = time.time()
        self.record: dict[str, Any] = {
            "status": RUNNING,
            "started": self.started,
            "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "overrides": list(overrides or []),
        }

    @property
    def path(self) -> Path:
        return self.output_dir / STATUS_FILE

    def start(self) -> None:
        """Mark the job running and clear a previous attempt's failure (a relaunch resumes)."""
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in (FAILED_MARKER, TRACEBACK_FILE):
            (self.output_dir / stale).unlink(missing_ok=True)
        _write_json(self.path, self.record)

    def _finish(self, status: str, **fields: Any) -> None:
        if not self.enabled:
            return
        ended = time.time()
        self.record.update(status=status, ended=ended, wall_seconds=ended - self.started,
                           **fields)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, self.record)

    def completed(self, summary: Any) -> None:
        """Record a finished job from its :class:`darkraw.training.RunSummary`."""
        metrics = {k: _finite(float(v)) for k, v in (getattr(summary, "metrics", {}) or {}).items()}
        self._finish(
            COMPLETED,
            global_step=int(getattr(summary, "global_step", 0) or 0),
            train_wall_seconds=_finite(float(getattr(summary, "wall_seconds", math.nan))),
            metrics=metrics,
            metrics_csv=str(summary.metrics_csv) if getattr(summary, "metrics_csv", None) else None,
            best_checkpoint=getattr(summary, "best_checkpoint", None),
        )

    def failed(self, error: BaseException) -> None:
        """Record the error, its traceback (``traceback.txt``) and the ``FAILED`` marker."""
        if not self.enabled:
            return
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / TRACEBACK_FILE).write_text(text)
        (self.output_dir / FAILED_MARKER).write_text(f"{type(error).__name__}: {error}\n")
        self._finish(FAILED, error_type=type(error).__name__, error=str(error),
                     traceback_file=TRACEBACK_FILE)

    def interrupted(self, error: BaseException) -> None:
        """Ctrl-C or ``sys.exit`` inside a job: not a failure of the config, but not finished."""
        message = str(error)
        if isinstance(error, SystemExit):
            # Lightning answers Ctrl-C with a graceful shutdown and exit(1).
            message = f"exit status {error.code} (Ctrl-C, or the process was told to exit)"
        self._finish(INTERRUPTED, error_type=type(error).__name__, error=message)


def sweeper_target() -> str:
    """The ``_target_`` of the running Hydra sweeper, or "" outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().sweeper.get("_target_", ""))


def failed_job_result(error: Exception) -> float:
    """What a failed multirun job hands back to its sweeper, so the sweep goes on.

    Hydra's BasicSweeper re-raises a job's exception after its batch and exits 1, so a failed
    job returns NaN instead: the sweep completes and the failure is in ``job_status.json``.
    Optuna is the exception: hydra-optuna-sweeper 1.3.0 with optuna 2.10 cannot take NaN
    (``study.tell`` raises on NaN and the plugin's fallback ``tell(FAIL, values=[nan])`` raises
    again, ending the whole study), while a raised exception becomes a FAIL trial and the study
    continues as far as ``hydra.sweeper.max_failure_rate`` allows. So under Optuna: re-raise.
    """
    if "optuna" in sweeper_target().lower():
        raise error
    return math.nan

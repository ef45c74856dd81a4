"""What each training job leaves about its own fate: ``job_status.json`` (and ``FAILED``).

A sweep is only comparable if every job says how it ended. Metrics files alone cannot tell a
job that failed at step 0 from one that is still running or was killed, and Hydra keeps a failed
job's traceback only in memory (its BasicSweeper re-raises the first failure *after* the batch,
so the sweep exits 1 and the other jobs' results look suspect). So ``train.py`` records, in the
job's own folder:

- ``job_status.json``: ``status`` = ``running`` at start, then ``completed`` / ``failed`` /
  ``interrupted``; the first start, the last end, wall seconds, steps, final metrics, overrides,
  the error. A job killed from outside with no chance to react (SIGKILL, the OOM killer) stays
  ``running``: the comparison reports it as ``incomplete``. SIGTERM (SLURM's time limit,
  ``kill``) is recorded as ``interrupted`` at any point of the job, also before training starts;
  a stop in training with the step it stopped at and the checkpoint it resumes from.
- ``traceback.txt`` and an empty ``FAILED`` marker for a failed job (``ls */FAILED`` finds them).
- ``.hydra/accepted/``: the ``.hydra`` files of the last launch that passed the start-up checks.

A single run refused at start by a config check (:meth:`JobStatus.rejected`) leaves no trace:
a relaunch of a finished run with a bad override that its folder name leaves out
(``data.num_workers=-1``) had marked that run failed and overwritten its ``.hydra`` record with
the refused settings; a fresh folder is removed again. A sweep's job keeps the failure.

A relaunch in the same folder (the same command, or a sweep continued with the same
``hydra.sweep.dir``) resumes the job, so the record is the job's, not the last process's: each
launch is a *segment* (``segments``, ``attempts``); ``started`` stays the first start,
``wall_seconds`` adds up the segments, and ``metrics`` keeps earlier values unless the new segment
reports the same key (a relaunch that finds ``max_steps`` reached validates nothing and reports
only ``best/...``). ``resume=false`` starts the job over, and its record with it.

Only rank 0 writes: under DDP the extra ranks run in the same folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

STATUS_FILE = "job_status.json"
FAILED_MARKER = "FAILED"
TRACEBACK_FILE = "traceback.txt"
#: Hydra's own record of a launch (``hydra.output_subdir``) and the copy of the last accepted one.
HYDRA_SUBDIR = ".hydra"
ACCEPTED_SUBDIR = "accepted"
#: The files of its own this module writes or removes in a job folder.
_OWN_FILES = (STATUS_FILE, FAILED_MARKER, TRACEBACK_FILE)
#: Where Lightning's CSVLogger writes in a job folder (conf/logger): the last sign of life of a
#: segment that was killed without a word.
METRICS_CSV = Path("csv") / "metrics.csv"

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
#: Status of an earlier segment whose record still said ``running`` when the job was relaunched:
#: its process died without recording anything (SIGKILL, OOM killer, power loss).
LOST = "lost"

#: Exit status of a process ended by SIGTERM (128 + 15), as the shell and SLURM report it.
SIGTERM_EXIT = 128 + signal.SIGTERM

#: Environment variables that carry a process's global rank (Lightning, torchrun, SLURM, LSF/MPI).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


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


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    # Write-then-rename: a reader (the comparison, run while a sweep is going) never sees half.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _copy_yaml_files(source: Path, target: Path) -> None:
    """The ``.yaml`` files directly in ``source``, copied into ``target`` (made if need be)."""
    files = sorted(p for p in source.glob("*.yaml") if p.is_file()) if source.is_dir() else []
    if files:
        target.mkdir(exist_ok=True)
    for path in files:
        (target / path.name).write_bytes(path.read_bytes())


def read_status(job_dir: str | Path) -> dict[str, Any] | None:
    """The job's ``job_status.json`` as a dict, or None when missing or unreadable."""
    path = Path(job_dir) / STATUS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _number(value: Any) -> float | None:
    """A finite float from a record's field, or None (missing, null, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _last_sign_of_life(record: Mapping[str, Any], output_dir: Path, since: float) -> float | None:
    """When a segment that died silently last wrote metrics (None if not after ``since``).

    A lower bound of its end: better than counting its time as zero in the job's wall time.
    """
    candidates = [Path(str(record["metrics_csv"]))] if record.get("metrics_csv") else []
    candidates.append(output_dir / METRICS_CSV)
    for path in candidates:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime > since:
            return mtime
    return None


def earlier_segments(record: Mapping[str, Any], output_dir: str | Path) -> list[dict[str, Any]]:
    """The finished segments a previous ``job_status.json`` describes, oldest first.

    A record from before segments were kept counts as one segment. A segment left at
    ``running`` is :data:`LOST`; its end is estimated from the metrics file's last write
    (``"estimated": true``) or unknown (``wall_seconds`` null).
    """
    if isinstance(record.get("segments"), list) and record["segments"]:
        segments = [dict(s) for s in record["segments"] if isinstance(s, Mapping)]
    else:
        segments = [{key: record.get(key) for key in
                     ("started", "ended", "wall_seconds", "status", "host", "pid",
                      "global_step", "error_type") if record.get(key) is not None}]
    last = segments[-1] if segments else None
    if last is not None and last.get("status", RUNNING) == RUNNING:
        started = _number(last.get("started"))
        ended = _last_sign_of_life(record, Path(output_dir), started) if started else None
        last.update(status=LOST, ended=ended, estimated=ended is not None,
                    wall_seconds=(ended - started) if ended is not None and started else None)
    return segments


def wall_seconds_so_far(record: Mapping[str, Any], output_dir: str | Path) -> float | None:
    """Wall time of a job whose last segment has not recorded its end (running or killed).

    ``wall_seconds`` is only summed when a segment ends; until then: the finished segments plus
    the current one up to its last metrics write (``.hydra/config.yaml`` would not do: Hydra
    rewrites it at every relaunch). None without segments.
    """
    segments = earlier_segments(record, output_dir) if record.get("segments") else []
    walls = [_number(s.get("wall_seconds")) for s in segments]
    return sum(w for w in walls if w is not None) if segments else None


def _starts_over(overrides: Iterable[str]) -> bool:
    """``resume=false`` on the command line: training starts from scratch, so does the record."""
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") == "resume" and value.strip().lower() == "false":
            return True
    return False


class StoppedInTraining(SystemExit):
    """A stop during fit that saved where to resume: SIGTERM (143), a first Ctrl-C (130) or
    SLURM's time-limit signal (143, then requeued); raised by darkraw.training.sigterm_exit.

    It carries the step and the resume point into the job's record: an interrupted job said
    only "SIGTERM during training", and the comparison guessed its steps from the last logged one.
    """

    def __init__(self, code: int, message: str, global_step: int,
                 resume_checkpoint: str | None) -> None:
        super().__init__(code)
        #: What the job printed: how it stopped, where it resumes from and how.
        self.message = message
        self.global_step, self.resume_checkpoint = global_step, resume_checkpoint


class Terminated(SystemExit):
    """SIGTERM outside Lightning's fit: exit with 143, as the default action would report.

    A ``SystemExit`` so that ``finally`` blocks (closing the W&B run) and train.py's handler of
    interruptions run, and Hydra passes it on instead of calling it a job failure.
    """

    def __init__(self, trained_step: int | None = None) -> None:
        super().__init__(SIGTERM_EXIT)
        #: The step training had finished at, when the signal came after it (testing the best
        #: checkpoint, plotting, closing W&B): the message then says the model is trained.
        self.trained_step = trained_step


def restore_accepted_hydra_files(job_dir: str | Path) -> None:
    """Put back the ``.hydra`` files of the folder's last accepted launch.

    Hydra rewrites them before train.py runs, so a launch refused at start would otherwise leave
    its own settings in the record that ``sweeps.compare`` and ``eval.py`` read.
    """
    hydra_dir = Path(job_dir) / HYDRA_SUBDIR
    _copy_yaml_files(hydra_dir / ACCEPTED_SUBDIR, hydra_dir)


class JobStatus:
    """Writes a job's status file through its life; every method is a no-op off rank 0.

    Between :meth:`start` and the end (:meth:`completed`, :meth:`failed`, :meth:`interrupted`)
    it also answers SIGTERM, which Python otherwise answers by dying on the spot and leaving the
    record at ``running``: see :meth:`_on_sigterm`.
    """

    def __init__(self, output_dir: str | Path, overrides: list[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = is_rank_zero() if enabled is None else enabled
        self.overrides = list(overrides or [])
        #: When this segment (this launch of the job) started.
        self.started = time.time()
        self.record: dict[str, Any] = {}
        self._segment: dict[str, Any] = {}
        self._earlier_wall: list[float | None] = []
        self._previous_sigterm: _SignalHandler = None
        self._sigterm_handler: Callable[[int, FrameType | None], None] | None = None
        self._sigterm_pid: int | None = None
        #: This module's files as start() found them (None: absent), for :meth:`rejected`.
        self._found: dict[str, bytes | None] = {}
        self.accepted_launch = False

    @property
    def path(self) -> Path:
        return self.output_dir / STATUS_FILE

    def start(self) -> None:
        """Mark the job running, carrying over what earlier launches of it recorded.

        Also clears a previous attempt's failure markers (a relaunch resumes) and installs the
        SIGTERM handler.
        """
        if not self.enabled:
            return
        self._found = {name: _read_bytes(self.output_dir / name) for name in _OWN_FILES}
        self._begin()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in (FAILED_MARKER, TRACEBACK_FILE):
            (self.output_dir / stale).unlink(missing_ok=True)
        _write_json(self.path, self.record)
        self._install_sigterm_handler()

    def accept(self) -> None:
        """The launch passed every start-up check: keep its ``.hydra`` files as the folder's
        accepted record, which :meth:`rejected` puts back after a refused relaunch."""
        self.accepted_launch = True
        if self.enabled:
            hydra_dir = self.output_dir / HYDRA_SUBDIR
            _copy_yaml_files(hydra_dir, hydra_dir / ACCEPTED_SUBDIR)

    def rejected(self, *launch_files: str | None) -> None:
        """Undo this launch's traces after a config check refused it, before anything ran.

        A folder with an earlier record gets back its record, markers and the ``.hydra`` files
        of its last accepted launch; a folder this launch made (it had no record) is removed
        again, but only what Hydra and this module wrote there (``.hydra/``) and
        ``launch_files`` (the job's log, the run lock).
        """
        if not self.enabled or not self._found:  # start() did not look: nothing to undo
            return
        self._restore_sigterm_handler()
        if self._found.get(STATUS_FILE) is not None:
            for name, content in self._found.items():
                if content is None:
                    (self.output_dir / name).unlink(missing_ok=True)
                else:
                    (self.output_dir / name).write_bytes(content)
            restore_accepted_hydra_files(self.output_dir)
            return
        for name in (*_OWN_FILES, *(name for name in launch_files if name)):
            (self.output_dir / name).unlink(missing_ok=True)
        hydra_dir = self.output_dir / HYDRA_SUBDIR
        for path in sorted(hydra_dir.glob("*.yaml")) if hydra_dir.is_dir() else []:
            path.unlink()
        for folder in (hydra_dir, self.output_dir):
            try:
                folder.rmdir()  # only when nothing else is in it
            except OSError:
                break

    def _begin(self) -> None:
        """This segment's record: the job's history from the folder, plus this launch."""
        self.started = time.time()
        previous = None if _starts_over(self.overrides) else read_status(self.output_dir)
        previous = previous or {}
        earlier = earlier_segments(previous, self.output_dir) if previous else []
        first = _number(earlier[0].get("started")) if earlier else None
        first = first if first is not None else self.started
        self._segment = {"started": self.started, "status": RUNNING,
                         "host": socket.gethostname(), "pid": os.getpid()}
        self._earlier_wall = [_number(s.get("wall_seconds")) for s in earlier]
        self.record = {
            "status": RUNNING,
            "started": first,
            "started_iso": _iso(first),
            "segment_started": self.started,
            "attempts": len(earlier) + 1,
            "segments": [*earlier, self._segment],
            "host": self._segment["host"],
            "pid": self._segment["pid"],
            "overrides": list(self.overrides),
            # Until this segment reports its own: what the earlier ones left (kept on failure).
            "metrics": dict(previous.get("metrics") or {}),
        }
        for key in ("metrics_csv", "best_checkpoint"):
            if previous.get(key):
                self.record[key] = previous[key]

    def _finish(self, status: str, *, segment: Mapping[str, Any] | None = None,
                **fields: Any) -> None:
        """End this segment: its own entry, then the job's totals over all segments.

        Safe to call twice for one segment (the SIGTERM handler records, then train.py's
        handler of the resulting exit records again): totals are recomputed, not added to.
        """
        if not self.enabled:
            return
        self._restore_sigterm_handler()
        if not self.record:  # start() was not called, or raised before its record existed
            self._begin()
        ended = time.time()
        self._segment.update(status=status, ended=ended, wall_seconds=ended - self.started,
                             **(segment or {}))
        walls = [*self._earlier_wall, self._segment["wall_seconds"]]
        for key in ("error_type", "error", "traceback_file", "segments_without_wall_time"):
            self.record.pop(key, None)
        self.record.update(status=status, ended=ended, ended_iso=_iso(ended),
                           wall_seconds=sum(w for w in walls if w is not None), **fields)
        unknown = sum(w is None for w in walls)
        if unknown:
            self.record["segments_without_wall_time"] = unknown
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, self.record)

    def completed(self, summary: Any) -> None:
        """Record a finished job from its :class:`darkraw.training.RunSummary`.

        Metrics merge into the earlier segments': a key this segment reports replaces the old
        value, the others stay (a relaunch past ``max_steps`` reports only ``best/...``).
        """
        if not self.enabled:
            return
        if not self.record:
            self._begin()
        metrics = {k: _finite(float(v)) for k, v in (getattr(summary, "metrics", {}) or {}).items()}
        step = int(getattr(summary, "global_step", 0) or 0)
        train_wall = _finite(float(getattr(summary, "wall_seconds", math.nan)))
        # Time inside train() over the segments that completed (the job's total: wall_seconds).
        train_walls = [_number(s.get("train_wall_seconds")) for s in self.record.get("segments", [])
                       if s is not self._segment]
        known = [w for w in [*train_walls, train_wall] if w is not None]
        fields: dict[str, Any] = {
            "global_step": step,
            "metrics": {**(self.record.get("metrics") or {}), **metrics},
            "train_wall_seconds": sum(known) if known else None,
        }
        if getattr(summary, "metrics_csv", None):
            fields["metrics_csv"] = str(summary.metrics_csv)
        if getattr(summary, "best_checkpoint", None):
            fields["best_checkpoint"] = summary.best_checkpoint
        self._finish(COMPLETED, segment={"global_step": step, "train_wall_seconds": train_wall},
                     **fields)

    def failed(self, error: BaseException) -> None:
        """Record the error, its traceback (``traceback.txt``) and the ``FAILED`` marker."""
        if not self.enabled:
            return
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / TRACEBACK_FILE).write_text(text)
        (self.output_dir / FAILED_MARKER).write_text(f"{type(error).__name__}: {error}\n")
        self._finish(FAILED, segment={"error_type": type(error).__name__},
                     error_type=type(error).__name__, error=str(error),
                     traceback_file=TRACEBACK_FILE)

    def interrupted(self, error: BaseException) -> None:
        """Ctrl-C, SIGTERM or ``sys.exit`` inside a job: not a failure of the config, not done."""
        message = str(error)
        segment: dict[str, Any] = {"error_type": type(error).__name__}
        fields: dict[str, Any] = {}
        if isinstance(error, StoppedInTraining):
            message = f"{error.message} (exit status {error.code})"
            segment["global_step"] = error.global_step
            fields = {"global_step": error.global_step,
                      "resume_checkpoint": error.resume_checkpoint}
        elif isinstance(error, Terminated):
            message = (f"SIGTERM (exit status {SIGTERM_EXIT}) before or after training; "
                       "relaunch the same command to resume")
        elif isinstance(error, SystemExit) and error.code == SIGTERM_EXIT:
            # Any other exit with SIGTERM's status (sigterm_exit raises StoppedInTraining).
            message = (f"SIGTERM during training (exit status {SIGTERM_EXIT}); relaunch the "
                       "same command to resume")
        elif isinstance(error, SystemExit):
            # Lightning answers Ctrl-C with a graceful shutdown and exit(1).
            message = f"exit status {error.code} (Ctrl-C, or the process was told to exit)"
        self._finish(INTERRUPTED, segment=segment, error_type=type(error).__name__,
                     error=message, **fields)

    # ------------------------------------------------------------------------- SIGTERM

    def _install_sigterm_handler(self) -> None:
        """Answer SIGTERM ourselves until the job's end is recorded (main thread only).

        A launcher that ignores SIGTERM keeps it ignored. Lightning's fit adds its own handler
        on top and restores ours afterwards (see :meth:`_on_sigterm`).
        """
        if self._sigterm_handler is not None or \
                threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN:
            return
        self._previous_sigterm = previous
        self._sigterm_handler = self._on_sigterm  # one object: compared by identity below
        self._sigterm_pid = os.getpid()
        signal.signal(signal.SIGTERM, self._sigterm_handler)

    def _restore_sigterm_handler(self) -> None:
        """Put back the handler :meth:`start` found, if ours is still the one installed.

        One installed on top of ours (Lightning's during fit) is left alone: it restores ours
        itself, and a later SIGTERM then finds the job's own end already recorded.
        """
        handler, self._sigterm_handler = self._sigterm_handler, None
        if handler is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is handler:
            previous = self._previous_sigterm
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        self._previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Record ``interrupted``, then end as SIGTERM would have: :class:`Terminated` (143).

        During ``Trainer.fit`` Lightning has installed its own handler and calls this one after
        its own (it chains an existing handler): then this one does nothing, so Lightning can
        finish the step, save a checkpoint and raise its ``SIGTERMException``, which train.py
        records as ``interrupted`` (exit 143, darkraw.training.sigterm_exit).

        A handler that was installed before :meth:`start` decides instead (submitit's, under
        the SLURM launcher, logs SIGTERM and lets the job go on): if it raises, that is
        recorded; if it returns, the job goes on and its record stays ``running``.
        """
        if os.getpid() != self._sigterm_pid:
            # A forked child (a cache-building or data-loading worker) inherited this handler:
            # the job's record is its parent's to write. Die as SIGTERM's default action would.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        handler = self._sigterm_handler
        if handler is None or signal.getsignal(signal.SIGTERM) is not handler:
            return  # called from Lightning's handler chain, or after the job's end
        previous = self._previous_sigterm
        if callable(previous):
            try:
                previous(signum, frame)
            except BaseException as error:
                self.interrupted(error)
                raise
            return
        self.interrupted(Terminated())  # also puts the default action back for a second one
        raise Terminated()


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

"""``hydra/launcher=local``: submitit's local launcher, with a Ctrl-C that lets jobs save.

Ctrl-C in a terminal signals the whole foreground process group: the Hydra process, the
submitit controller of each job, and the jobs. darkraw's jobs answer the first Ctrl-C by
finishing the step and saving ``last.ckpt`` (callbacks/last_checkpoint.py). But submitit's
controller answers it by sending its job a second SIGINT (which a darkraw job takes as "quit at
once, without saving") and SIGKILL a second later, and the Hydra process dies in submitit's
polling loop with a KeyboardInterrupt traceback. So the jobs lost the steps since their last
periodic save, and the user saw a traceback instead of where the sweep stood.

Here the controllers are started with SIGINT ignored (an ignored signal is inherited by a child
process; a Python handler is not), and each job puts Python's own Ctrl-C back before it runs.
The sweep process ignores Ctrl-C while its jobs run: it waits for them to save and stop (a
second Ctrl-C reaches the jobs too, and stops them at once), then says in one line per job how
each ended and how to continue the sweep.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.utils import JobReturn

from sweeps.job_status import INTERRUPTED, read_status

#: Exit status of a sweep stopped by Ctrl-C, as a shell reports it (128 + SIGINT).
CTRL_C_EXIT = 128 + signal.SIGINT
#: Set for the jobs when the sweep itself took Ctrl-C: they put it back. A sweep started with
#: SIGINT already ignored (a shell's background job, nohup) leaves its jobs ignoring it too.
JOB_CTRL_C_VARIABLE = "DARKRAW_JOB_TAKES_CTRL_C"


def job_outcomes(sweep_dir: Path) -> dict[str, str]:
    """Each job folder of the sweep (by name) and the status its ``job_status.json`` records."""
    outcomes = {}
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        record = read_status(folder)
        if record is not None:
            outcomes[folder.name] = str(record.get("status", "unknown"))
    return outcomes


def interrupted_sweep_message(sweep_dir: Path, outcomes: dict[str, str]) -> str:
    """What a user needs after stopping a sweep: which jobs stopped, and the command's addition
    that continues this sweep (a new ``-m`` command would start a new timestamped folder)."""
    stopped = [name for name, status in outcomes.items() if status == INTERRUPTED]
    others = {name: status for name, status in outcomes.items() if status != INTERRUPTED}
    lines = [f"darkraw: sweep stopped by Ctrl-C: {len(stopped)} of {len(outcomes)} jobs "
             "interrupted, each with its last.ckpt saved at the step it reached"]
    lines += [f"  {status}: {sweep_dir / name}" for name, status in others.items()]
    lines.append(f"  continue it: the same command with hydra.sweep.dir={sweep_dir} (each job "
                 "resumes from its last.ckpt)")
    return "\n".join(lines)


def launch_keeping_ctrl_c_for_the_jobs(launch: Callable[[], Sequence[JobReturn]],
                                       sweep_dir: Path) -> Sequence[JobReturn]:
    """Run submitit's ``launch`` (submit, then wait) with the controllers deaf to Ctrl-C; a
    sweep whose jobs were stopped by it ends with one message and exit status 130."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the controllers
    had_variable = JOB_CTRL_C_VARIABLE in os.environ
    if previous != signal.SIG_IGN:
        os.environ[JOB_CTRL_C_VARIABLE] = "1"  # the controllers' environment, and the jobs'
    try:
        return launch()
    except (FailedJobError, UncompletedJobError):
        # darkraw's jobs return NaN when they fail (train.py): a job that raised out of its
        # process was stopped. Anything else (a job killed from outside) stays raised.
        outcomes = job_outcomes(sweep_dir) if sweep_dir.is_dir() else {}
        if INTERRUPTED not in outcomes.values():
            raise
        print(interrupted_sweep_message(sweep_dir, outcomes), file=sys.stderr, flush=True)
        raise SystemExit(CTRL_C_EXIT) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        if not had_variable:
            os.environ.pop(JOB_CTRL_C_VARIABLE, None)


def restore_ctrl_c_in_the_job() -> None:
    """In a job's own process: Ctrl-C as in any Python program (and so darkraw's save on
    Ctrl-C, which leaves an ignored SIGINT alone)."""
    if os.environ.get(JOB_CTRL_C_VARIABLE) and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

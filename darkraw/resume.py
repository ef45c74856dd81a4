"""Where a run continues from: a killed or preempted job relaunched with the same command
finds its last checkpoint in its (override-named, not timestamped) output folder."""

from __future__ import annotations

import pickle
import shlex
from collections.abc import Iterable
from pathlib import Path

from darkraw.checkpoints import first_line, load_torch_file
from darkraw.errors import ConfigError, DataError

LAST_CHECKPOINT = "last.ckpt"
RESUME_MODES = ("auto", True, False)


def resolve_resume(mode: object, checkpoint_dir: Path) -> str | None:
    """The checkpoint path to hand to ``Trainer.fit``, or None to start from scratch."""
    if isinstance(mode, str) and mode.lower() in ("true", "false"):
        mode = mode.lower() == "true"
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume={mode!r} is not allowed: choose one of auto, true, false")
    last = Path(checkpoint_dir) / LAST_CHECKPOINT
    if mode is False:
        return None
    if last.is_file():
        return str(last)
    if mode is True:
        raise ConfigError(
            f"resume=true but there is no checkpoint at {last}. Relaunch with the same overrides "
            "as the run to continue (its output folder is named by them), or resume=auto."
        )
    return None


def check_resume_checkpoint(path: str | Path | None, others: Iterable[Path] = ()) -> None:
    """Fail in one line, before Lightning gets it, if the checkpoint to resume from is damaged.

    A checkpoint cut short (a full disk before writes were atomic, a copy interrupted, a file
    truncated by hand) otherwise ends the run in torch's 30-line traceback ("PytorchStreamReader
    failed reading zip archive"), and relaunching the same command only repeats it. ``others``
    are the run's other checkpoints (best-*.ckpt, SLURM requeue files): the intact ones are named
    as what to resume from instead.
    """
    if path is None:
        return
    path = Path(path)
    problem = unreadable(path)
    if problem is None:
        return
    intact = [p for p in others if Path(p) != path and Path(p).is_file() and unreadable(p) is None]
    fresh = ("start over with resume=false (the previous run's checkpoints, metrics and images "
             "are moved to <run folder>/replaced-<date-time>/, nothing is deleted)")
    names = ", ".join(p.name for p in intact)
    if path.name != LAST_CHECKPOINT:  # a SLURM requeue checkpoint, chosen for being the newest
        instead = (f"delete it (rm {shlex.quote(str(path))}) to resume from the next newest "
                   "checkpoint" + (f" ({names} intact)" if intact else ""))
    elif intact:
        instead = (f"copy an intact checkpoint over it and resume from that one's step, e.g. "
                   f"cp {shlex.quote(str(intact[0]))} {shlex.quote(str(path))} (intact: {names})")
    else:
        raise DataError(
            f"the checkpoint to resume from, {path}, is damaged and cannot be read ({problem}), "
            f"and no other intact checkpoint is left in {path.parent}: {fresh}"
        )
    raise DataError(
        f"the checkpoint to resume from, {path}, is damaged and cannot be read ({problem}). "
        f"Either {fresh}, or {instead}"
    )


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as a checkpoint (torch's reason, one line), or None.

    Loaded with ``weights_only=True`` on the CPU (nothing from the file is executed); a file
    that holds other pickled objects is readable, and Lightning decides what to do with it.
    """
    try:
        load_torch_file(path, "resume", "")
    except DataError as error:
        cause = error.__cause__
        if isinstance(cause, pickle.UnpicklingError) and "Unsupported global" in str(cause):
            return None
        if cause is None:
            return str(error)
        # torch's first sentence says what failed; the rest of its line is generic advice.
        return f"{type(cause).__name__}: {first_line(cause).split('. ')[0]}"
    return None

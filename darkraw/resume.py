"""Where a run continues from: a killed or preempted job relaunched with the same command
finds its last checkpoint in its (override-named, not timestamped) output folder."""

from __future__ import annotations

from pathlib import Path

from darkraw.errors import ConfigError

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

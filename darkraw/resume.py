"""Where a run continues from: a killed or preempted job relaunched with the same command
finds its last checkpoint in its (override-named, not timestamped) output folder."""

from __future__ import annotations

import json
import pickle
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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


def check_resume_checkpoint(path: str | Path | None, others: Iterable[Path] = ()) -> Any:
    """Fail in one line, before Lightning gets it, if the checkpoint to resume from is damaged.

    Returns what the file holds (None if ``path`` is None, or if it holds pickled objects that a
    weights-only load refuses), so :func:`check_resume_settings` need not read it again.

    A checkpoint cut short (a full disk before writes were atomic, a copy interrupted, a file
    truncated by hand) otherwise ends the run in torch's 30-line traceback ("PytorchStreamReader
    failed reading zip archive"), and relaunching the same command only repeats it. ``others``
    are the run's other checkpoints (best-*.ckpt, SLURM requeue files): the intact ones are named
    as what to resume from instead.
    """
    if path is None:
        return None
    path = Path(path)
    checkpoint, problem = _read(path)
    if problem is None:
        return checkpoint
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
    """Why ``path`` cannot be loaded as a checkpoint (torch's reason, one line), or None."""
    return _read(path)[1]


def _read(path: Path) -> tuple[Any, str | None]:
    """What ``path`` holds, and why it cannot be loaded as a checkpoint (None if it can).

    Loaded with ``weights_only=True`` on the CPU (nothing from the file is executed); a file
    that holds other pickled objects is readable (its contents are then None here), and
    Lightning decides what to do with it.
    """
    try:
        return load_torch_file(path, "resume", ""), None
    except DataError as error:
        cause = error.__cause__
        if isinstance(cause, pickle.UnpicklingError) and "Unsupported global" in str(cause):
            return None, None
        if cause is None:
            return None, str(error)
        # torch's first sentence says what failed; the rest of its line is generic advice.
        return None, f"{type(cause).__name__}: {first_line(cause).split('. ')[0]}"


#: The module's hyper-parameters that say what is trained, by their config group. The others
#: (``compile``, ``train_metrics_every_n_steps``, ``summary_image_size``) say how it runs or is
#: logged, and may change between launches.
TRAINING_HPARAMS = {"net": "model", "loss": "loss", "optimizer": "optimizer",
                    "scheduler": "scheduler"}


def _flat(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"<prefix>.a.b": 1}``, values JSON-normalised (tuples: lists)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, name))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def training_settings(module_hparams: Mapping[str, Any],
                      data_hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a run's training depends on, flat and named as on the command line."""
    settings: dict[str, Any] = {}
    for key, group in TRAINING_HPARAMS.items():
        value = module_hparams.get(key)
        if isinstance(value, Mapping):
            settings.update(_flat(value, group))
    settings.update(_flat(dict(data_hparams or {}), "data"))
    return settings


def changed_settings(checkpoint: Mapping[str, Any], current: Mapping[str, Any],
                     ignored: Iterable[str] = ()) -> list[str]:
    """``current``'s settings that differ from those the checkpoint was trained with.

    Only settings both sides have count: a setting a newer darkraw added is not a change.
    ``ignored``: config keys that may change between launches (hydra's ``exclude_keys``: paths,
    loader workers, progress bars), or a group of them (``data``).
    """
    trained = training_settings(checkpoint.get("hyper_parameters") or {},
                                checkpoint.get("datamodule_hyper_parameters"))
    skip = tuple(ignored)

    def is_ignored(name: str) -> bool:
        return any(name == key or name.startswith(f"{key}.") for key in skip)

    return [f"{name}={current[name]!r} (the checkpoint's run: {trained[name]!r})"
            for name in sorted(trained.keys() & current.keys())
            if not is_ignored(name) and trained[name] != current[name]]


def check_resume_settings(path: str | Path | None, checkpoint: Any,
                          module_hparams: Mapping[str, Any],
                          data_hparams: Mapping[str, Any] | None,
                          ignored: Iterable[str] = ()) -> None:
    """Refuse to resume a checkpoint under settings other than those it was trained with.

    Lightning would load the weights into whatever network this command builds and restore the
    optimizer's learning rate from the file: an edited experiment file, ``conf/local``, or a run
    folder pinned with ``hydra.run.dir`` continued the old run under the new settings, with the
    new learning rate silently ignored. The run folder is named by command-line overrides only,
    so a changed config file does not change it. ``checkpoint``: the file's contents, as
    :func:`check_resume_checkpoint` returns them (None: nothing to compare).
    """
    if path is None or not isinstance(checkpoint, Mapping):
        return
    changes = changed_settings(checkpoint, training_settings(module_hparams, data_hparams),
                               ignored)
    if not changes:
        return
    run_folder = Path(path).parent.parent
    raise ConfigError(
        f"cannot resume {path}: it was trained with other settings than this command's: "
        f"{'; '.join(changes)}. Resuming would continue that run under the new settings (its "
        "learning rate and other optimizer state come back from the file). Either use the "
        "checkpoint's settings (did a config file change? the run folder is named by the "
        "command-line overrides only), or start over with resume=false (the old run moves to "
        f"{run_folder}/replaced-<date-time>/), or give this run a folder of its own "
        "(hydra.run.dir=...)"
    )


#: The one override that means "the same run, trained longer"; it names the run's folder, so a
#: changed value starts a new run from scratch.
MAX_STEPS_KEY = "trainer.max_steps"


def _identity(overrides: Iterable[str], excluded: set[str]) -> tuple[frozenset[str], str | None]:
    """The overrides that name a run's folder, less ``trainer.max_steps``, and that value."""
    kept, max_steps = set(), None
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == MAX_STEPS_KEY:
            max_steps = value
        elif key not in excluded:
            kept.add(f"{key}={value}")
    return frozenset(kept), max_steps


def same_run_with_other_max_steps(run_dir: Path, overrides: Iterable[str],
                                  excluded: Iterable[str]) -> list[tuple[Path, str | None]]:
    """Sibling run folders with a checkpoint whose overrides differ from ``overrides`` only in
    ``trainer.max_steps`` (None: the config's own value), with that value.

    "Train it longer" is a new ``trainer.max_steps``, which names a new folder: the command
    starts over there, hours from the run it was meant to continue, without a word.
    """
    run_dir = Path(run_dir)
    siblings = sorted(p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir)
    return runs_with_other_max_steps(siblings, overrides, excluded)


def runs_with_other_max_steps(folders: Iterable[Path], overrides: Iterable[str],
                              excluded: Iterable[str]) -> list[tuple[Path, str | None]]:
    """Those of the run ``folders`` with a checkpoint whose overrides differ from ``overrides``
    only in ``trainer.max_steps``, with that value (None: the config's own)."""
    excluded = set(excluded)
    mine, my_steps = _identity(overrides, excluded)
    found = []
    for folder in folders:
        recorded = folder / ".hydra" / "overrides.yaml"
        if not recorded.is_file() or not (folder / "checkpoints" / LAST_CHECKPOINT).is_file():
            continue
        try:
            from omegaconf import OmegaConf

            theirs = [str(o) for o in OmegaConf.load(recorded)]
        except Exception:  # an unreadable record only costs the hint
            continue
        identity, steps = _identity(theirs, excluded)
        if identity == mine and steps != my_steps:
            found.append((folder, steps))
    return found

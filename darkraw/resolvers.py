"""OmegaConf resolvers that the configs use; registered once, before Hydra builds paths."""

from __future__ import annotations

import hashlib
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Longest folder name made from overrides, in bytes. File systems allow 255; longer names made
#: Hydra's mkdir fail with "File name too long", killing the job (and a whole sweep) before
#: train.py starts.
MAX_DIRNAME_BYTES = 200


def run_dirname(override_dirname: str) -> str:
    """A folder name from a job's overrides: stable across relaunches, so resume finds it.

    Names over :data:`MAX_DIRNAME_BYTES` keep a readable prefix and end in a hash of the whole
    name (still stable; the full overrides are in ``<folder>/.hydra/overrides.yaml``).
    """
    cleaned = override_dirname.replace("/", "_").replace("\\", "_").strip()
    encoded = cleaned.encode()
    if len(encoded) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha1(encoded).hexdigest()[:12]
        prefix = encoded[: MAX_DIRNAME_BYTES - len(digest) - 1].decode(errors="ignore")
        cleaned = f"{prefix}-{digest}"
    return cleaned or "default"


def _swept_overrides(root: DictConfig) -> list[Any]:
    """The sweep's overrides: the command line's task overrides and the sweeper's ``params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(o) for o in OmegaConf.select(root, "hydra.overrides.task", default=None) or []]
    params = OmegaConf.select(root, "hydra.sweeper.params", default=None) or {}
    lines += [f"{key}={value}" for key, value in params.items()]
    return [o for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()]


def _refuse_sweeping(keys: tuple[str, ...], root: DictConfig, why: str) -> None:
    """Exit with one line when the sweep varies one of ``keys``: ``why`` says what breaks."""
    from darkraw.cli import exit_with_user_error
    from darkraw.errors import ConfigError

    for override in _swept_overrides(root):
        key = override.key_or_group
        if key not in keys:
            continue
        values = list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
        split = (" and ".join(f"`-m ... {key}={v}`" for v in values) if values
                 else f"`-m ... {key}=<one value>` per value")
        # Exits rather than raises: OmegaConf would wrap the error in a resolution traceback.
        exit_with_user_error(ConfigError(
            f"{override.input_line}: {key} cannot be swept {why}. Launch one sweep per value: "
            f"{split}."
        ))


def unswept(key: str, value: Any, launcher: str, *, _root_: DictConfig) -> Any:
    """``value`` (the config's ``key``), refused when the sweep varies ``key``.

    conf/hydra/launcher/{slurm,local}.yaml take the GPUs (and SLURM's tasks and nodes) they ask
    for from trainer.devices and trainer.num_nodes, and Hydra configures the launcher once per
    sweep, from the base config: with ``trainer.devices=2,4`` every job would get the same
    GPUs, and the ones asking for another count would fail (on a cluster, after queueing).
    """
    _refuse_sweeping((key,), _root_, f"with hydra/launcher={launcher} (it asks for the GPUs, "
                     "tasks and nodes once for the whole sweep)")
    return value


def sweep_experiment(name: str, *, _root_: DictConfig) -> str:
    """``name`` (the experiment's), for the sweep folder; refused when the sweep varies it.

    Hydra names the sweep folder once, from the base config, and each job's sub-folder from its
    overrides without ``experiment`` (the experiment's name is in the path already): jobs of
    ``-m experiment=paper,ablation_baseline model.rdb=after`` would share ``model.rdb=after/``,
    the second resuming (or being refused) the first's checkpoints. A swept ``name`` would put
    each job under another experiment's folder, away from the sweep's ``multirun.yaml``.
    """
    _refuse_sweeping(("experiment", "name"), _root_,
                     "(a sweep's folder, outputs/<experiment>/multirun/<date>/<time>, and its "
                     "W&B group belong to one experiment)")
    return name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("darkraw.dirname"):
        OmegaConf.register_new_resolver("darkraw.dirname", run_dirname)
    if not OmegaConf.has_resolver("darkraw.unswept"):
        OmegaConf.register_new_resolver("darkraw.unswept", unswept)
    if not OmegaConf.has_resolver("darkraw.sweep_experiment"):
        OmegaConf.register_new_resolver("darkraw.sweep_experiment", sweep_experiment)


register_resolvers()

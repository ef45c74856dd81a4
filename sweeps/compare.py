"""Compare the jobs of one Hydra multirun side by side, offline, from the files they leave.

    python -m sweeps.compare outputs/ablation_baseline/multirun/2026-11-25/12-00-00
    python -m sweeps.compare <sweep folder> --min-psnr-rise 1.0 --strict

Reads, per job folder: ``.hydra/overrides.yaml`` (its swept values), ``.hydra/hydra.yaml`` (its
job number), ``csv/metrics.csv`` (every logged metric) and ``job_status.json`` (how it ended,
written by train.py; see :mod:`sweeps.job_status`); and the sweep's ``multirun.yaml`` (which keys
were swept, which jobs were planned). Writes into the sweep folder:

- ``comparison.md`` / ``comparison.csv``: one row per job: swept values, status, final and best
  validation PSNR/SSIM, the amplified-input PSNR, steps, wall time, throughput, a learning flag;
- ``comparison_seeds.csv`` (and a Markdown section) when a seed axis exists: mean and sample std
  over seeds per variant;
- ``comparison_val.png`` (validation PSNR and SSIM) and ``comparison_train_loss.png``, against
  steps, one line per job;

and prints the table (Rich) and how to open the runs in W&B.

Why a "did not learn" flag: the ablation study this project exists for ran 400k iterations with
SSIM stuck near 0.52 and nothing said so. The rule (thresholds are options) flags a job whose
validation PSNR and SSIM both stayed flat, whose best PSNR never beat the naively amplified input,
or whose training loss went non-finite. It reads the same files as everything else, so it also
judges old sweeps.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import socket
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from darkraw.cli import at_least_one, override_key
from darkraw.plots import read_metrics
from darkraw.suggest import did_you_mean
from sweeps.job_status import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    read_status,
    wall_seconds_so_far,
)
from sweeps.wandb_offline import find_run_dirs, read_run_record

#: Status names in the table besides those of job_status.json.
INCOMPLETE = "incomplete"   # job_status.json says running, but its process is gone
NOT_STARTED = "not started"  # planned in multirun.yaml, no job folder
UNKNOWN = "unknown"          # no job_status.json (a run from before train.py wrote one)

VAL_PSNR, VAL_SSIM, VAL_INPUT = "val/psnr", "val/ssim", "val/psnr_input"
TRAIN_LOSS = "train/loss"
ITERS, PATCHES = "perf/iters_per_sec", "perf/patches_per_sec"

#: Per-job columns of comparison.csv after the swept keys, in order.
METRIC_COLUMNS = (
    "final_val_psnr", "best_val_psnr", "best_val_psnr_step", "final_val_ssim", "best_val_ssim",
    "val_psnr_input", "gain_over_input_db", "steps", "wall_s", "iters_per_s", "patches_per_s",
)
#: Columns averaged over seeds.
AGGREGATED = ("final_val_psnr", "best_val_psnr", "final_val_ssim", "best_val_ssim",
              "gain_over_input_db", "steps", "wall_s", "iters_per_s")


@dataclass
class LearningRule:
    """When a job counts as "did not learn". Defaults suit short CPU runs and full runs alike."""

    #: Best validation PSNR minus the first one, in dB, below which PSNR counts as flat ...
    min_psnr_rise_db: float = 0.5
    #: ... and best validation SSIM minus the first one below which SSIM counts as flat.
    #: Flat in both: flagged (one of them moving is learning).
    min_ssim_rise: float = 0.01
    #: Best validation PSNR must beat the amplified input's PSNR by this many dB.
    min_gain_over_input_db: float = 0.0
    #: Fewer validations than this: too early to judge (no flag, "n/a").
    min_val_points: int = 2

    def judge(self, series: dict[str, list[tuple[int, float]]],
              nonfinite: dict[str, int]) -> tuple[bool | None, dict[str, str]]:
        """``(learned, {short flag: full reason})``; learned is None with too little to judge."""
        reasons: dict[str, str] = {}
        if nonfinite.get(TRAIN_LOSS):
            reasons["non-finite loss"] = (f"non-finite train loss at {nonfinite[TRAIN_LOSS]} "
                                          "logged steps")
        psnr = [v for _, v in series.get(VAL_PSNR, [])]
        ssim = [v for _, v in series.get(VAL_SSIM, [])]
        if len(psnr) < self.min_val_points:
            if reasons:
                return False, reasons
            return None, {"too early": f"{len(psnr)} validation(s): too few to judge"}
        psnr_rise = max(psnr) - psnr[0]
        ssim_rise = (max(ssim) - ssim[0]) if ssim else 0.0
        if psnr_rise < self.min_psnr_rise_db and ssim_rise < self.min_ssim_rise:
            last_ssim = ssim[-1] if ssim else math.nan
            reasons["flat"] = (f"val PSNR and SSIM flat: PSNR +{psnr_rise:.2f} dB and SSIM "
                               f"+{ssim_rise:.3f} over their first values (SSIM stuck near "
                               f"{last_ssim:.2f})")
        inputs = [v for _, v in series.get(VAL_INPUT, [])]
        if inputs:
            gain = max(psnr) - statistics.fmean(inputs)
            if gain < self.min_gain_over_input_db:
                reasons["below input"] = (f"never beat the amplified input: best "
                                          f"{max(psnr):.2f} dB vs input "
                                          f"{statistics.fmean(inputs):.2f} dB")
        return (not reasons), reasons


@dataclass
class Job:
    """One job of the sweep, as read back from its folder."""

    name: str
    job_dir: Path | None
    overrides: list[str] = field(default_factory=list)
    num: int | None = None
    status: str = UNKNOWN
    error: str | None = None
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    #: Why its csv/metrics.csv gave nothing (missing, empty, unreadable), or None.
    metrics_problem: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    learned: bool | None = None
    reasons: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    wandb_runs: list[Path] = field(default_factory=list)
    wandb_group: str | None = None

    @property
    def params(self) -> dict[str, str]:
        """``{key: value}`` of the job's overrides (``+``/``~`` prefixes dropped)."""
        return split_overrides(self.overrides)


@dataclass
class Comparison:
    sweep_dir: Path
    jobs: list[Job]
    swept_keys: list[str]
    #: ``{key: override}`` of the overrides every job shares, as typed (``+sweep=rdb``).
    common: dict[str, str]
    seed_key: str | None
    command: str | None
    rule: LearningRule
    seed_rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def split_overrides(overrides: Iterable[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        params[key.lstrip("+~")] = value
    return params


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_job(job_dir: Path) -> Job:
    job = Job(name=job_dir.name, job_dir=job_dir)
    overrides = job_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        job.overrides = [str(o) for o in OmegaConf.load(overrides)]
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num", default=None)
        job.num = int(num) if num is not None else None
    metrics_csv = job_dir / "csv" / "metrics.csv"
    if not metrics_csv.is_file():
        job.metrics_problem = f"{metrics_csv} is missing"
    else:
        try:
            job.series, job.nonfinite = read_metrics(metrics_csv)
        except (UnicodeDecodeError, csv.Error, OSError) as error:
            # One damaged file must not take the whole comparison down with a traceback.
            job.metrics_problem = (f"{metrics_csv} cannot be read ({type(error).__name__}: "
                                   f"{error})")
        else:
            if not job.series:
                job.metrics_problem = f"{metrics_csv} holds no metrics"
    status = read_status(job_dir)
    if status is None:
        job.status = UNKNOWN
    else:
        job.status = str(status.get("status", UNKNOWN))
        if job.status == RUNNING and not (status.get("host") == socket.gethostname()
                                          and _pid_alive(status.get("pid"))):
            job.status = INCOMPLETE
        if job.status in (FAILED, INTERRUPTED):
            job.error = f"{status.get('error_type', '')}: {status.get('error', '')}".strip(": ")
    job.values = job_values(job, status, metrics_csv)
    job.wandb_runs = find_run_dirs(job_dir)
    if job.wandb_runs:
        record = read_run_record(job.wandb_runs[-1])
        job.wandb_group = record.get("group") if record else None
    return job


def job_values(job: Job, status: dict[str, Any] | None, metrics_csv: Path) -> dict[str, Any]:
    """The per-job numbers of the table, NaN where a job has none."""
    nan = math.nan
    psnr, ssim = job.series.get(VAL_PSNR, []), job.series.get(VAL_SSIM, [])
    inputs = [v for _, v in job.series.get(VAL_INPUT, [])]
    best_psnr = max(psnr, key=lambda sv: sv[1]) if psnr else (None, nan)
    values: dict[str, Any] = {
        "final_val_psnr": psnr[-1][1] if psnr else nan,
        "best_val_psnr": best_psnr[1],
        "best_val_psnr_step": best_psnr[0] if best_psnr[0] is not None else nan,
        "final_val_ssim": ssim[-1][1] if ssim else nan,
        "best_val_ssim": max(v for _, v in ssim) if ssim else nan,
        "val_psnr_input": statistics.fmean(inputs) if inputs else nan,
    }
    values["gain_over_input_db"] = values["best_val_psnr"] - values["val_psnr_input"]
    logged_steps = [s for points in job.series.values() for s, _ in points]
    steps = (status or {}).get("global_step")
    if steps is None and logged_steps:
        # Unfinished job: logged steps are 0-based, so the last one + 1 optimiser steps are done.
        steps = max(logged_steps) + 1
    values["steps"] = int(steps) if steps is not None else nan
    wall = (status or {}).get("wall_seconds")
    if wall is None and status and status.get("segments"):
        wall = wall_seconds_so_far(status, metrics_csv.parent.parent)  # the job folder
    if wall is None and metrics_csv.is_file() and job.job_dir is not None:
        # No status file: from the job folder's first file (Hydra's config) to the last metrics.
        config = job.job_dir / ".hydra" / "config.yaml"
        if config.is_file():
            wall = metrics_csv.stat().st_mtime - config.stat().st_mtime
    values["wall_s"] = float(wall) if wall is not None else nan
    for key, column in ((ITERS, "iters_per_s"), (PATCHES, "patches_per_s")):
        # Median over the logged windows: the first window includes warm-up.
        points = [v for _, v in job.series.get(key, [])]
        values[column] = statistics.median(points) if points else nan
    return values


@dataclass
class Plan:
    """What ``multirun.yaml`` says about a sweep (all empty without one)."""

    #: Each planned job's overrides; None when the sweeper plans as it goes (Optuna).
    jobs: list[list[str]] | None = None
    #: Keys the sweep spec sweeps (``+``/``~`` prefixes dropped).
    swept: list[str] = field(default_factory=list)
    #: The command that continues this sweep in this folder (or reruns a finished one).
    command: str | None = None
    #: ``{key: override as typed}`` of the command line's task overrides, ``+`` kept.
    typed: dict[str, str] = field(default_factory=dict)


def sweep_command(task: Sequence[str], hydra_overrides: Sequence[str], sweep_dir: Path) -> str:
    """``python train.py -m`` with the overrides as typed, and the sweep folder.

    ``hydra.sweep.dir`` is what makes the command continue this sweep (finished jobs end at
    once, the others resume) instead of starting a new timestamped one, so it is always there:
    as typed when it names this folder from here, else as this folder's absolute path.
    ``hydra.mode=MULTIRUN`` is how Hydra records ``-m``, so it is not repeated.
    """
    here = sweep_dir.resolve()
    arguments = list(task)
    has_dir = False
    for override in hydra_overrides:
        key = override_key(override)
        if key == "hydra.mode":
            continue
        if key == "hydra.sweep.dir":
            has_dir = True
            typed = str(override).partition("=")[2]
            if Path(typed).expanduser().resolve() != here:
                override = f"hydra.sweep.dir={here}"  # moved, or compared from elsewhere
        arguments.append(str(override))
    if not has_dir:
        arguments.append(f"hydra.sweep.dir={here}")
    return "python train.py -m " + " ".join(shlex.quote(a) for a in arguments)


def planned_jobs(sweep_dir: Path) -> Plan:
    """The sweep's plan, command and typed overrides from its ``multirun.yaml``.

    The planned list is rebuilt the way Hydra's BasicSweeper builds it (its ``params`` plus the
    command-line overrides, expanded as a cartesian product), so jobs a killed sweep never
    started are reported. Other sweepers (Optuna) plan as they go: no list.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return Plan()
    plan = Plan()
    try:
        config = OmegaConf.load(path)
        task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[])]
        hydra_overrides = [str(o) for o in
                           OmegaConf.select(config, "hydra.overrides.hydra", default=[])]
        plan.command = sweep_command(task, hydra_overrides, sweep_dir)
        plan.typed = {override_key(o): o for o in task}
        sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
        sweeper = OmegaConf.to_container(sweeper, resolve=False) if sweeper is not None else {}
        params = sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + task
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(arguments)
        plan.swept = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
        if "basic_sweeper" in str(sweeper.get("_target_", "")):
            batches = BasicSweeper.split_arguments(parsed, None)
            plan.jobs = [list(job) for batch in batches for job in batch]
    except Exception:  # the plan is a completeness check, not a requirement
        pass
    return plan


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders: those with a ``.hydra`` folder or a status file, at any depth below."""
    found = {p.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    found = {p.parent for p in found}
    found |= {p.parent for p in sweep_dir.rglob("job_status.json")}
    return sorted(d for d in found if d != sweep_dir)


# ----------------------------------------------------------------------------- comparing


def collect(sweep_dir: str | Path, rule: LearningRule | None = None,
            seed_key: str = "seed") -> Comparison:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is a file, not a folder" if sweep_dir.exists() else "does not exist"
        raise FileNotFoundError(f"{sweep_dir} {what}: pass the sweep folder Hydra printed "
                                "(outputs/<experiment>/multirun/<date>/<time>)")
    refuse_several_sweeps(sweep_dir)
    rule = rule or LearningRule()
    jobs = [read_job(d) for d in find_job_dirs(sweep_dir)]
    plan = planned_jobs(sweep_dir)
    if plan.jobs is not None:
        seen = [set(j.overrides) for j in jobs]
        for overrides in plan.jobs:
            if set(overrides) not in seen:
                jobs.append(Job(name=",".join(overrides), job_dir=None, overrides=overrides,
                                status=NOT_STARTED))
    if not jobs and (sweep_dir / ".hydra" / "overrides.yaml").is_file():
        # A job's (or a single run's) own folder: its .hydra is there, but no jobs below it.
        parent = sweep_dir.resolve().parent
        if launched_as_multirun(sweep_dir):
            raise FileNotFoundError(f"{sweep_dir} is one job's folder, not a sweep's: pass the "
                                    f"sweep folder that holds the job folders, {parent}")
        raise FileNotFoundError(
            f"{sweep_dir} is a single run's folder (train.py without -m), not a sweep's: its "
            "learning curve is learning_curve.png and csv/metrics.csv there; to compare it "
            f"with the experiment's other runs, pass the folder that holds them, {parent}")
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir} holds no job folders (no .hydra/overrides.yaml below it): pass the "
            "folder Hydra printed as the sweep's output "
            "(outputs/<experiment>/multirun/<date>/<time>)")
    jobs.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.name))
    for job in jobs:
        if job.status == COMPLETED and job.metrics_problem:
            # A finished job whose metrics are gone cannot be shown to have learned: said, and
            # counted by --strict, rather than a row of "-" that passes.
            job.learned, job.flags, job.reasons = False, ["no metrics"], [job.metrics_problem]
            print(f"darkraw: warning: {job.name}: {job.metrics_problem}", file=sys.stderr)
        elif job.status in (COMPLETED, UNKNOWN, INCOMPLETE, INTERRUPTED, RUNNING):
            job.learned, found = rule.judge(job.series, job.nonfinite)
            job.flags, job.reasons = list(found), list(found.values())
    swept_keys, common = sweep_axes(jobs, plan.swept)
    # As the user typed them (`+sweep=rdb`, `preflight.enabled=false`): a job's overrides.yaml
    # has Hydra's re-rendering of its values (`False`).
    common = {k: plan.typed.get(k, v) for k, v in common.items()}
    seed = seed_key if seed_key in swept_keys else None
    comparison = Comparison(sweep_dir=sweep_dir, jobs=jobs, swept_keys=swept_keys,
                            common=common, seed_key=seed, command=plan.command, rule=rule)
    if seed:
        comparison.seed_rows = aggregate_seeds(comparison)
    return comparison


def launched_as_multirun(job_dir: Path) -> bool:
    """Whether Hydra recorded the folder's launch as a job of a multirun (``hydra.mode``)."""
    try:
        recorded = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
    except Exception:  # no or an unreadable record: treated as the more common single run
        return False
    return str(OmegaConf.select(recorded, "hydra.mode", default="")).upper() == "MULTIRUN"


def refuse_several_sweeps(folder: Path) -> None:
    """Refuse a folder above sweeps (``outputs/<experiment>/multirun/<date>``, the time left off).

    Its jobs would be mixed into one table, seeds of different sweeps averaged together, with no
    command to continue any of them and a ``wandb sync`` pattern that matches none of the runs.
    """
    if (folder / "multirun.yaml").is_file():
        return
    below = sorted(p.parent for p in folder.rglob("multirun.yaml"))
    if below:
        shown = ", ".join(str(p) for p in below[:3]) + (", ..." if len(below) > 3 else "")
        raise FileNotFoundError(
            f"{folder} is not a sweep folder but holds {len(below)} sweep(s): {shown}; pass "
            "one of them (the folder Hydra printed)")


def sweep_axes(jobs: Sequence[Job],
               swept_in_plan: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between jobs (or that the sweep spec sweeps), and the rest.

    The rest as ``{key: override}``, the override with its ``+``/``~`` prefix: ``sweep=rdb``
    is not a valid override where ``+sweep=rdb`` was typed.
    """
    all_params = [j.params for j in jobs]
    keys: list[str] = []
    for params in all_params:
        keys += [k for k in params if k not in keys]
    swept = [k for k in keys if k in swept_in_plan
             or len({p.get(k) for p in all_params}) > 1]
    first = {override_key(o): str(o) for o in jobs[0].overrides}
    common = {k: first[k] for k in keys if k not in swept and k in first}
    return swept, common


def variant_key(job: Job, swept_keys: Sequence[str], seed_key: str | None) -> tuple[str, ...]:
    return tuple(job.params.get(k, "") for k in swept_keys if k != seed_key)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = statistics.fmean(finite)
    # Sample standard deviation (n - 1): the spread a further seed would show; n = 1: unknown.
    return mean, statistics.stdev(finite) if len(finite) > 1 else math.nan


def aggregate_seeds(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per variant (the swept values but the seed): mean and std over its seeds.

    Only completed jobs enter the statistics; the others (failed, interrupted, running, not
    started) are counted apart as not completed, so a mean over 2 of 3 seeds says so.
    """
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in comparison.jobs:
        groups.setdefault(variant_key(job, comparison.swept_keys, comparison.seed_key),
                          []).append(job)
    rows = []
    variant_keys = [k for k in comparison.swept_keys if k != comparison.seed_key]
    for key, members in groups.items():
        done = [j for j in members if j.status in (COMPLETED, UNKNOWN)]
        row: dict[str, Any] = dict(zip(variant_keys, key, strict=True))
        row["seeds"] = ",".join(j.params.get(comparison.seed_key or "", "?") for j in done)
        row["n"] = len(done)
        row["n_jobs"] = len(members)
        row["n_not_completed"] = sum(j.status not in (COMPLETED, UNKNOWN) for j in members)
        row["n_not_learned"] = sum(j.learned is False for j in done)
        for column in AGGREGATED:
            mean, std = _mean_std([j.values.get(column, math.nan) for j in done])
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- writing


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def _flag(job: Job) -> str:
    if job.status in (FAILED, NOT_STARTED):
        return ""
    if job.learned is None:
        return "n/a"
    return "yes" if job.learned else "NO (" + ", ".join(job.flags) + ")"


def _status(job: Job, width: int | None = None) -> str:
    if not job.error:
        return job.status
    error = job.error if width is None or len(job.error) <= width else \
        job.error[: width - 3] + "..."
    return f"{job.status}: {error}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-job table as people read it (Markdown and Rich)."""
    header = [*comparison.swept_keys, "status", "final PSNR", "best PSNR (step)", "final SSIM",
              "best SSIM", "input PSNR", "steps", "wall", "it/s", "patches/s", "learned"]
    rows = []
    for job in comparison.jobs:
        v = job.values
        best = (f"{_fmt(v.get('best_val_psnr'))} ({_fmt(v.get('best_val_psnr_step'), 0)})"
                if v and math.isfinite(v.get("best_val_psnr", math.nan)) else "-")
        wall = v.get("wall_s", math.nan) if v else math.nan
        rows.append([
            *(job.params.get(k, "") for k in comparison.swept_keys), _status(job, 48),
            _fmt(v.get("final_val_psnr")) if v else "-", best,
            _fmt(v.get("final_val_ssim"), 4) if v else "-",
            _fmt(v.get("best_val_ssim"), 4) if v else "-",
            _fmt(v.get("val_psnr_input")) if v else "-",
            _fmt(v.get("steps"), 0) if v else "-",
            _duration(wall),
            _fmt(v.get("iters_per_s")) if v else "-",
            _fmt(v.get("patches_per_s"), 1) if v else "-",
            _flag(job),
        ])
    return header, rows


def seed_table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in comparison.swept_keys if k != comparison.seed_key]
    header = [*keys, "seeds (n/jobs)", "final PSNR", "best PSNR", "final SSIM", "best SSIM",
              "gain over input", "wall", "it/s", "not learned", "not completed"]

    def pm(row: dict[str, Any], column: str, digits: int = 2) -> str:
        mean, std = row[f"{column}_mean"], row[f"{column}_std"]
        if not math.isfinite(mean):
            return "-"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else \
            f"{mean:.{digits}f}"

    rows = []
    for row in comparison.seed_rows:
        wall = row["wall_s_mean"]
        rows.append([
            *(row[k] for k in keys), f"{row['seeds'] or '-'} ({row['n']}/{row['n_jobs']})",
            pm(row, "final_val_psnr"), pm(row, "best_val_psnr"), pm(row, "final_val_ssim", 4),
            pm(row, "best_val_ssim", 4), pm(row, "gain_over_input_db"),
            _duration(wall),
            pm(row, "iters_per_s"), str(row["n_not_learned"]), str(row["n_not_completed"]),
        ])
    return header, rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def write_csv(comparison: Comparison, path: Path) -> Path:
    """Machine-readable per-job table: full precision, empty cells for missing values."""
    columns = ["job", "num", "status", *comparison.swept_keys, *METRIC_COLUMNS, "learned",
               "reasons", "error", "job_dir"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for job in comparison.jobs:
            row: dict[str, Any] = {
                "job": job.name, "num": job.num if job.num is not None else "",
                "status": job.status, "learned": "" if job.learned is None else job.learned,
                "reasons": "; ".join(job.reasons), "error": job.error or "",
                "job_dir": str(job.job_dir) if job.job_dir else "",
            }
            row.update({k: job.params.get(k, "") for k in comparison.swept_keys})
            row.update({k: _csv_value(job.values.get(k, math.nan)) for k in METRIC_COLUMNS})
            writer.writerow(row)
    return path


def write_seed_csv(comparison: Comparison, path: Path) -> Path:
    columns = list(comparison.seed_rows[0]) if comparison.seed_rows else []
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in comparison.seed_rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


def wandb_lines(comparison: Comparison) -> list[str]:
    runs = [r for j in comparison.jobs for r in j.wandb_runs]
    if not runs:
        return []
    groups = sorted({j.wandb_group for j in comparison.jobs if j.wandb_group})
    sweep = str(comparison.sweep_dir)
    # The example must be a job that has a wandb/ folder: a job that failed before its logger
    # started (often the first one, in job order) has none.
    example = next(j.job_dir for j in comparison.jobs if j.wandb_runs and j.job_dir)
    return [f"W&B: {len(runs)} offline run(s) in {sum(bool(j.wandb_runs) for j in comparison.jobs)}"
            f" of {len(comparison.jobs)} job(s)"
            + (f", group {', '.join(repr(g) for g in groups)}" if groups else "") + ".",
            f"  upload all:  wandb sync '{sweep}'/*/wandb/offline-run-*",
            "  browse one:  wandb leet '<job folder>/wandb'   e.g.",
            f"               wandb leet '{example}/wandb'"]


def write_markdown(comparison: Comparison, path: Path) -> Path:
    rule = comparison.rule
    header, rows = table_rows(comparison)
    parts = [f"# Sweep comparison: `{comparison.sweep_dir.name}`", ""]
    if comparison.command:
        parts += ["Command:", "", "```bash", comparison.command, "```", ""]
    if comparison.common:
        parts += ["Common to all jobs: "
                  + ", ".join(f"`{o}`" for o in comparison.common.values()), ""]
    done = sum(j.status == COMPLETED for j in comparison.jobs)
    parts += [f"{len(comparison.jobs)} job(s): {done} completed, "
              f"{sum(j.status == FAILED for j in comparison.jobs)} failed, "
              f"{sum(j.status not in (COMPLETED, FAILED) for j in comparison.jobs)} other.", "",
              "PSNR in dB on the validation split; *input PSNR* is the naively amplified input "
              "(the floor a network must beat); *it/s* and *patches/s* are training throughput "
              "(median over logged windows, validation excluded).", "",
              _markdown_table(header, rows), ""]
    optuna = comparison.sweep_dir / "optimization_results.yaml"
    if optuna.is_file():
        result = OmegaConf.to_container(OmegaConf.load(optuna))
        if isinstance(result, dict) and "best_value" in result:
            parts += [f"Optuna's best trial: value {result['best_value']:.4f} with "
                      + ", ".join(f"`{k}={v}`" for k, v in (result.get("best_params") or {})
                                  .items()) + " (`optimization_results.yaml`).", ""]
    if comparison.seed_rows:
        s_header, s_rows = seed_table_rows(comparison)
        parts += [f"## Over seeds (`{comparison.seed_key}`): mean ± sample std", "",
                  _markdown_table(s_header, s_rows), ""]
    failed = [j for j in comparison.jobs if j.status in (FAILED, INCOMPLETE, NOT_STARTED,
                                                         INTERRUPTED)]
    # Named by their swept values: folder names of long overrides are cut, and end in a hash.
    labels = run_labels(comparison)
    if failed:
        parts += ["## Jobs that did not finish", ""]
        for job in failed:
            where = ("" if job.job_dir is None else f" (`{job.job_dir.name}/traceback.txt`)"
                     if job.status == FAILED else f" (`{job.job_dir.name}`)")
            parts.append(f"- {labels[id(job)]}: {_status(job)}{where}")
        parts.append("")
    flagged = [j for j in comparison.jobs if j.learned is False]
    if flagged:
        parts += ["## Jobs that did not learn", ""]
        parts += [f"- {labels[id(j)]} (`{j.job_dir.name if j.job_dir else j.name}`): "
                  + "; ".join(j.reasons) for j in flagged] + [""]
    parts += ["## Learning check", "",
              f"Flagged *did not learn* when validation PSNR rose less than "
              f"{rule.min_psnr_rise_db} dB **and** SSIM less than {rule.min_ssim_rise} above "
              f"their first values, when the best PSNR stayed below the amplified input + "
              f"{rule.min_gain_over_input_db} dB, or when the training loss went non-finite; "
              f"*n/a* with fewer than {rule.min_val_points} validations.", ""]
    plots = [p for k, p in comparison.outputs.items() if p.suffix == ".png"]
    if plots:
        parts += ["## Curves", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines = wandb_lines(comparison)
    if lines:
        parts += ["## W&B", "", "```", *lines, "```", ""]
    path.write_text("\n".join(parts))
    return path


def run_labels(comparison: Comparison) -> dict[int, str]:
    """Short legend labels: swept values with keys shortened to their last part when unique."""
    keys = comparison.swept_keys
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(short.values())) < len(short):
        short = {k: k for k in keys}
    return {id(j): (", ".join(f"{short[k]}={j.params.get(k, '')}" for k in keys) or j.name)
            for j in comparison.jobs}


def plot(comparison: Comparison) -> dict[str, Path]:
    """Validation PSNR/SSIM and training loss against steps, one line per job.

    Jobs of one variant share a colour and differ in line style by seed, so seeds read as a band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from darkraw.plots import smooth

    jobs = [j for j in comparison.jobs if j.series]
    labels = run_labels(comparison)
    variants: list[tuple[str, ...]] = []
    members: dict[tuple[str, ...], int] = {}
    looks: dict[int, tuple[str, str]] = {}
    styles = ["-", "--", ":", "-."]
    for job in jobs:
        key = variant_key(job, comparison.swept_keys, comparison.seed_key)
        if key not in variants:
            variants.append(key)
        index = members[key] = members.get(key, -1) + 1
        looks[id(job)] = (f"C{variants.index(key) % 10}", styles[index % len(styles)])

    def style(job: Job) -> tuple[str, str]:
        return looks[id(job)]

    out: dict[str, Path] = {}
    fig, (ax_psnr, ax_ssim) = plt.subplots(1, 2, figsize=(13, 4.5))
    baseline_drawn = False
    for job in jobs:
        color, line = style(job)
        label = labels[id(job)] + ("" if job.learned is not False else " (did not learn)")
        if VAL_PSNR in job.series:
            ax_psnr.plot(*zip(*job.series[VAL_PSNR], strict=True), line, marker="o",
                         markersize=3, color=color, label=label)
        if VAL_SSIM in job.series:
            ax_ssim.plot(*zip(*job.series[VAL_SSIM], strict=True), line, marker="o",
                         markersize=3, color=color, label=label)
        if VAL_INPUT in job.series and not baseline_drawn:
            steps, values = zip(*job.series[VAL_INPUT], strict=True)
            ax_psnr.axhline(statistics.fmean(values), color="grey", linestyle="--", linewidth=1,
                            label="amplified input")
            baseline_drawn = True
    ax_psnr.set(xlabel="step", ylabel="dB", title="validation PSNR")
    ax_ssim.set(xlabel="step", ylabel="SSIM", title="validation SSIM")
    for ax in (ax_psnr, ax_ssim):
        ax.grid(alpha=0.3)
    if ax_psnr.get_legend_handles_labels()[0]:
        ax_psnr.legend(fontsize=8)
    fig.suptitle(f"sweep {comparison.sweep_dir.name}")
    fig.tight_layout()
    out["val"] = comparison.sweep_dir / "comparison_val.png"
    fig.savefig(out["val"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for job in jobs:
        if TRAIN_LOSS not in job.series:
            continue
        color, line = style(job)
        steps, values = zip(*job.series[TRAIN_LOSS], strict=True)
        ax.plot(steps, values, line, color=color, alpha=0.25, linewidth=1)
        # Smoothing that suits the number of points: a fixed 0.8 lags far behind on a short run.
        weight = min(0.9, max(0.0, 1 - 10 / len(values)))
        ax.plot(steps, smooth(values, weight), line, color=color, label=labels[id(job)])
    ax.set(xlabel="step", ylabel="L1 + w (1 - MS-SSIM)", title="training loss (EMA, raw faint)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out["train_loss"] = comparison.sweep_dir / "comparison_train_loss.png"
    fig.savefig(out["train_loss"], dpi=110)
    plt.close(fig)
    return out


def write_all(comparison: Comparison, plots: bool = True) -> dict[str, Path]:
    if plots:
        comparison.outputs.update(plot(comparison))
    comparison.outputs["csv"] = write_csv(comparison, comparison.sweep_dir / "comparison.csv")
    if comparison.seed_rows:
        comparison.outputs["seeds_csv"] = write_seed_csv(
            comparison, comparison.sweep_dir / "comparison_seeds.csv")
    comparison.outputs["markdown"] = write_markdown(comparison,
                                                    comparison.sweep_dir / "comparison.md")
    return comparison.outputs


def print_rich(comparison: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    table = Table(title=f"sweep {comparison.sweep_dir}", show_lines=False)
    header, rows = table_rows(comparison)
    for column in header:
        table.add_column(column, overflow="fold")
    for job, row in zip(comparison.jobs, rows, strict=True):
        style = "red" if job.status in (FAILED, INCOMPLETE, NOT_STARTED) else \
            "yellow" if job.learned is False else None
        table.add_row(*row, style=style)
    console.print(table)
    if comparison.common:
        console.print("common: " + " ".join(comparison.common.values()),
                      markup=False)
    if comparison.seed_rows:
        s_header, s_rows = seed_table_rows(comparison)
        seeds = Table(title=f"over seeds ({comparison.seed_key}): mean ± sample std")
        for column in s_header:
            seeds.add_column(column, overflow="fold")
        for row in s_rows:
            seeds.add_row(*row)
        console.print(seeds)
    for job in comparison.jobs:
        if job.learned is False or job.status not in (COMPLETED, UNKNOWN):
            why = "; ".join(job.reasons) if job.learned is False else _status(job)
            console.print(f"  {job.name}: {why}", style="yellow", markup=False, soft_wrap=True)
    # soft_wrap: paths and commands stay on one line, so they can be copied.
    for name, path in comparison.outputs.items():
        console.print(f"{name:>11}: {path}", markup=False, highlight=False, soft_wrap=True)
    for line in wandb_lines(comparison):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = LearningRule()

    def finite(text: str) -> float:
        # nan passed: every comparison with it is False, so every job counted as learned.
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value

    parser = argparse.ArgumentParser(
        prog="python -m sweeps.compare",
        description="Compare the jobs of a Hydra multirun from their files (offline).")
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder Hydra printed")
    parser.add_argument("--seed-key", default=None,
                        help="override key of the seed axis to average over (default: seed, "
                             "where the sweep sweeps it); a key the sweep does not sweep is "
                             "refused")
    parser.add_argument("--min-psnr-rise", type=finite, default=defaults.min_psnr_rise_db,
                        help="dB the best val PSNR must rise above the first (with SSIM)")
    parser.add_argument("--min-ssim-rise", type=finite, default=defaults.min_ssim_rise,
                        help="rise of the best val SSIM over the first (with PSNR)")
    parser.add_argument("--min-gain-over-input", type=finite,
                        default=defaults.min_gain_over_input_db,
                        help="dB the best val PSNR must beat the amplified input by")
    # 0 judged jobs with no validation at all (and max() of nothing failed).
    parser.add_argument("--min-val-points", type=at_least_one("validation"),
                        default=defaults.min_val_points,
                        help="validations needed before judging")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 if a job failed, did not finish or did not learn")
    return parser.parse_args(argv)


def unswept_seed_key(comparison: Comparison, key: str) -> str:
    """Why ``--seed-key key`` cannot be averaged over, and what would be."""
    swept = list(comparison.swept_keys)
    if key in comparison.common:
        why = f"every job has {comparison.common[key]}: there is nothing to average over"
    else:
        hint = did_you_mean(key, swept, "--seed-key ")
        why = f"no job of the sweep sets {key}" + (f" ({hint})" if hint else "")
    return (f"--seed-key {key}: {why}; the sweep's swept keys are "
            f"{', '.join(swept) if swept else 'none'} (leave --seed-key out to compare the jobs "
            "one by one)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rule = LearningRule(min_psnr_rise_db=args.min_psnr_rise, min_ssim_rise=args.min_ssim_rise,
                        min_gain_over_input_db=args.min_gain_over_input,
                        min_val_points=args.min_val_points)
    try:
        comparison = collect(args.sweep_dir, rule=rule, seed_key=args.seed_key or "seed")
    except FileNotFoundError as error:
        print(f"darkraw: error: {error}", file=sys.stderr)
        return 1
    if args.seed_key is not None and comparison.seed_key is None:
        # Accepted silently, the seed table was simply missing: a typo looked like "no seeds".
        print(f"darkraw: error: {unswept_seed_key(comparison, args.seed_key)}", file=sys.stderr)
        return 1
    write_all(comparison, plots=not args.no_plots)
    if not args.quiet:
        print_rich(comparison)
    bad = [j for j in comparison.jobs if j.status != COMPLETED or j.learned is False]
    return 2 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())

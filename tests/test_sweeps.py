"""Ablation sweeps as users type them: named sweeps compose, real multiruns run, fail and compare.

Fast tests compose the named sweeps with Hydra's compose API and expand them into jobs the way
Hydra's BasicSweeper does. The slow ones run ``train.py -m`` in a subprocess on the generated
SID-style set for a few steps, then ``python -m sweeps.compare`` on its folder, and check the
table against each job's own ``csv/metrics.csv`` and the W&B group/tags against each job's
offline run (read with ``wandb leet inspect --json``, W&B's own reader).
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import darkraw.resolvers  # noqa: F401  (the folder-name resolver the hydra config uses)
from darkraw.sweep_check import check_sweep
from lightning_modules.schedule import floor_warning, lr_multiplier
from sweeps.job_status import read_status
from sweeps.wandb_offline import find_run_dirs, read_run_record
from tests.helpers import (
    FAST_TRAIN,
    REPO,
    fixture_data_overrides,
    login_node_path,
    recorded_run,
    run_entry_point,
    subprocess_env,
)

CONF = REPO / "conf"


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def planned_jobs(overrides: list[str], sweep_args: list[str] = ()) -> list[list[str]]:
    """The jobs Hydra's BasicSweeper launches: its ``params`` plus command-line sweeps."""
    cfg = compose_train(overrides)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides) + list(sweep_args)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize(
    ("sweep", "jobs", "swept"),
    [
        ("rdb", 2, {"model.rdb"}),
        ("rdb_seeds", 6, {"model.rdb", "seed"}),
        ("lr_decay", 3, {"scheduler.gamma"}),
        ("ablation", 6, {"model.rdb", "scheduler.gamma"}),
    ],
)
def test_named_sweeps_compose_and_expand(sweep: str, jobs: int, swept: set[str]) -> None:
    cfg = compose_train([f"+sweep={sweep}"])
    assert cfg.hydra.mode.name == "MULTIRUN"  # `-m` is optional
    assert "basic_sweeper" in cfg.hydra.sweeper._target_
    planned = planned_jobs([f"+sweep={sweep}"])
    assert len(planned) == jobs
    values: dict[str, set[str]] = {}
    for job in planned:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    assert {k for k, v in values.items() if len(v) > 1} == swept
    for job in planned:  # every job's config composes
        compose_train(job)


def test_seeds_as_a_command_line_axis() -> None:
    planned = planned_jobs(["+sweep=rdb"], ["seed=1,2,3"])
    assert len(planned) == 6
    assert {tuple(sorted(j)) for j in planned} == {
        tuple(sorted(["+sweep=rdb", f"model.rdb={r}", f"seed={s}"]))
        for r in ("after", "before") for s in (1, 2, 3)}


def test_lr_decay_strong_arm_is_not_floored_back_to_baseline() -> None:
    """With the recipe's 1e-5 floor, gamma 0.02 equals 0.1 at lr 1e-4: the sweep sets min_lr 0."""
    base = ["experiment=ablation_baseline", "+sweep=lr_decay"]
    final_lr = {}
    for job in planned_jobs(base):
        cfg = compose_train(job)
        s, lr = cfg.scheduler, cfg.optimizer.lr
        assert cfg.name == "ablation_baseline" and list(s.milestones) == [250000]
        assert s.min_lr == 0 and floor_warning(lr, s.milestones, s.gamma, s.min_lr) is None
        final_lr[s.gamma] = lr * lr_multiplier(400_000, lr, s.milestones, s.gamma, s.min_lr)
    assert final_lr == pytest.approx({1: 1e-4, 0.1: 1e-5, 0.02: 2e-6})
    # The pitfall the sweep avoids: the baseline's floor makes the strong arm x0.1.
    floored = compose_train(["experiment=ablation_baseline", "scheduler.gamma=0.02"]).scheduler
    assert floor_warning(1e-4, floored.milestones, 0.02, floored.min_lr) is not None


def test_optuna_sweep_composes() -> None:
    cfg = compose_train(["+sweep=optuna"])
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_.lower()
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert set(sweeper.params) == {"optimizer.lr", "loss.ms_ssim_weight"}
    assert sweeper.max_failure_rate == 1.0
    assert cfg.optimized_metric == "val/psnr"
    assert compose_train(["+sweep=optuna", "hydra.sweeper.n_trials=3"]).hydra.sweeper.n_trials == 3


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_continued_seeded_search_draws_new_trials(tmp_path: Path, sampler: str) -> None:
    """With its first seed again, the continued sampler drew trial 0's parameters again: the
    trial then reopened trial 0's finished job folder and ended at once with its value."""
    import optuna
    from hydra.utils import instantiate

    from sweeps.resumable_optuna import continued_sampler, quiet_optuna

    quiet_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_cfg = compose_train(["+sweep=optuna", f"hydra/sweeper/sampler={sampler}",
                                 "hydra.sweeper.sampler.seed=1"]).hydra.sweeper.sampler
    space = {"lr": optuna.distributions.LogUniformDistribution(1e-5, 1e-3),
             "w": optuna.distributions.UniformDistribution(0.0, 1.0)}
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def run_trials(chosen: object, n: int) -> list[dict[str, float]]:
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                    sampler=chosen, direction="maximize")
        drawn = []
        for _ in range(n):
            trial = study.ask(space)
            study.tell(trial, trial.params["lr"])
            drawn.append(trial.params)
        return drawn

    first = run_trials(instantiate(sampler_cfg), 2)
    # What a continuation drew before: the first seed's first point, trial 0's.
    assert run_trials(instantiate(sampler_cfg), 1) == first[:1]
    again = instantiate(sampler_cfg)
    continued = continued_sampler(sampler_cfg, 3, again)
    assert continued is not again and continued_sampler(sampler_cfg, 0, again) is again
    drawn = run_trials(continued, 2)
    assert all(params not in first for params in drawn), (first, drawn)
    # Reproducible: the same continuation draws the same first point.
    twins = [optuna.create_study(sampler=continued_sampler(sampler_cfg, 3, again)).ask(space)
             for _ in range(2)]
    assert twins[0].params == twins[1].params


def test_an_unseeded_sampler_is_kept_as_it_is() -> None:
    from sweeps.resumable_optuna import continued_sampler

    sampler_cfg = compose_train(["+sweep=optuna"]).hydra.sweeper.sampler
    marker = object()
    assert continued_sampler(sampler_cfg, 5, marker) is marker


def test_wandb_tags_fit_wandbs_limit() -> None:
    from darkraw.training import WANDB_TAG_MAX, wandb_tags

    tags = wandb_tags("quickstart", [], ["model.rdb=after", "data.root=/" + "x" * 100])
    assert "model.rdb=after" in tags and "quickstart" in tags
    assert all(1 <= len(t) <= WANDB_TAG_MAX for t in tags)


# ----------------------------------------------------------------------------- real sweeps


@pytest.mark.parametrize(("args", "swept"), [
    (["experiment=quickstart,paper", "model.rdb=after"], "experiment=quickstart,paper"),
    (["+sweep=rdb", "experiment=quickstart,ablation_baseline"],
     "experiment=quickstart,ablation_baseline"),
    (["name=a,b"], "name=a,b"),
])
def test_sweeping_the_experiment_is_refused_before_any_job(tmp_path: Path, args: list[str],
                                                           swept: str) -> None:
    """Its jobs' folders are named without ``experiment``: both would be ``model.rdb=after/``."""
    proc = run_entry_point("train.py", "-m", *args, f"paths.root_dir={tmp_path}", check=False,
                           timeout=120)
    key, values = swept.split("=")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"darkraw: error: {swept}: {key} cannot be swept (a sweep's "
                                  "folder, outputs/<experiment>/multirun/"), proc.stderr
    split = " and ".join(f"`-m ... {key}={value}`" for value in values.split(","))
    assert f"Launch one sweep per value: {split}." in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("args", "expected"), [
    # Hydra's "Could not override 'model.rbd'" block, with its wrong `+model.rbd=` advice.
    (["-m", "model.rbd=after,before"],
     "job 1 of 2 (model.rbd=after): model.rbd is not a setting: did you mean model.rdb? No job "
     "was started"),
    # Found only when the second job started, after the first had trained.
    (["+sweep=rdb", "model.rdb=after,bfore"],
     "job 2 of 2 (model.rdb=bfore): model.rdb='bfore' is not allowed: choose one of"),
    (["-m", "seed=1,2", "optimizer.lr=0.001,-1"],
     "job 2 of 4 (seed=1 optimizer.lr=-1): optimizer.lr=-1 is not allowed: must be > 0"),
    (["-m", "+sweep=optuna", "model.rdb=bfore"],
     "the sweep's fixed overrides: model.rdb='bfore' is not allowed"),
])
def test_every_job_of_a_sweep_is_checked_before_the_first_starts(
        tmp_path: Path, args: list[str], expected: str) -> None:
    proc = run_entry_point("train.py", *args, f"paths.root_dir={tmp_path}", check=False,
                           timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith(f"darkraw: error: {expected}"), proc.stderr
    assert proc.stderr.rstrip().endswith("No job was started: correct the sweep and launch it "
                                         "again"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_a_gpu_sweep_passes_the_check_on_a_machine_without_gpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SLURM sweep is launched from a login node: its jobs' GPUs are checked where they run."""
    assert check_sweep("train", ["-m", "trainer=gpu", "model.rdb=after,before"]).error is None
    monkeypatch.setenv("PATH", login_node_path(tmp_path / "bin"))
    assert check_sweep("train", ["-m", "hydra/launcher=slurm", "trainer=ddp",
                                 "trainer.devices=2", "seed=1,2"]).error is None
    assert check_sweep("train", ["model.rdb=after"]).error is None  # not a sweep: not its business


def test_a_slurm_sweep_off_a_slurm_cluster_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit ended it in a traceback ("Could not detect srun") after making the folder."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands
    message = check_sweep("train", ["-m", "hydra/launcher=slurm", "seed=1,2"]).error
    assert message == (
        "the sweep's launcher: hydra/launcher=slurm submits each job to SLURM, and this machine "
        "has no sbatch or srun on its PATH: it is not a SLURM login node. Launch the sweep from "
        "the cluster's login node; on this machine leave hydra/launcher out (jobs one after the "
        "other) or use hydra/launcher=local (jobs side by side). No job was started: correct "
        "the sweep and launch it again")
    assert check_sweep("train", ["-m", "hydra/launcher=local", "seed=1,2"]).error is None


def test_sweep_folders_of_two_experiments_differ() -> None:
    """Two sweeps started in the same second shared ``multirun/<date>/<time>/`` before."""
    folders = {compose_train([f"experiment={name}", "hydra.mode=MULTIRUN"]).hydra.sweep.dir
               for name in ("quickstart", "ablation_baseline")}
    assert len(folders) == 2, folders
    assert all(f"/{name}/multirun/" in " ".join(folders)
               for name in ("quickstart", "ablation_baseline")), folders


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded cache for every sweep of this module (the first job builds it)."""
    return tmp_path_factory.mktemp("sweep_cache")


def fast(synthetic_sid: Path, cache_dir: Path, root: Path, *extra: str) -> list[str]:
    """FAST_TRAIN on the generated set, plus what these sweeps need, without repeating a key."""
    wanted = [
        *FAST_TRAIN, *fixture_data_overrides(synthetic_sid, cache_dir),
        f"paths.root_dir={root}", "preflight.enabled=false",
        *extra,
    ]
    out: dict[str, str] = {}
    for item in wanted:  # later items win, as on a command line
        out[item.split("=", 1)[0]] = item
    return list(out.values())


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml"))


def job_overrides(job: Path) -> list[str]:
    return [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]


def metric_values(job: Path, key: str) -> list[float]:
    """A metric straight from the job's CSV, in file order: the comparison's ground truth."""
    with open(job / "csv" / "metrics.csv", newline="") as handle:
        return [float(r[key]) for r in csv.DictReader(handle) if r.get(key) not in (None, "")]


def read_table(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "comparison.csv", newline="") as handle:
        return {r["job_dir"]: r for r in csv.DictReader(handle)}


def inspect_run(run_dir: Path) -> tuple[dict, dict]:
    """(run record, merged config) as W&B's own CLI reads them from the offline .wandb log."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    if not wandb_cli.exists():
        wandb_cli = Path(shutil.which("wandb") or "wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=60, env=subprocess_env(),
                          stdin=subprocess.DEVNULL, check=True)
    run, config = None, {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "run":
            run = record["run"]
        elif record.get("type") == "config":
            config.update(record["config"].get("update", {}))
    assert run is not None, f"no run record in {run_dir}: {proc.stdout[:500]}"
    return run, config


@pytest.mark.slow
def test_rdb_multirun_then_comparison(synthetic_sid: Path, cache_dir: Path,
                                      tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_entry_point("train.py", "-m", "model.rdb=after,before", f"hydra.sweep.dir={sweep}",
                    *fast(synthetic_sid, cache_dir, tmp_path), timeout=400)
    jobs = job_dirs(sweep)
    # Folder names may end in a hash when the overrides are long: their order is not the sweep's.
    assert sorted(dict(o.split("=", 1) for o in job_overrides(j))["model.rdb"] for j in jobs) == [
        "after", "before"]

    proc = subprocess.run([sys.executable, "-m", "sweeps.compare", str(sweep)], cwd=tmp_path,
                          env=subprocess_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "model.rdb" in proc.stdout and "wandb sync" in proc.stdout

    table = read_table(sweep)
    assert len(table) == 2
    for job in jobs:
        row = table[str(job)]
        status = read_status(job)
        assert status["status"] == row["status"] == "completed"
        psnr, ssim = metric_values(job, "val/psnr"), metric_values(job, "val/ssim")
        assert len(psnr) == 2  # 4 steps, validation every 2
        assert float(row["final_val_psnr"]) == pytest.approx(psnr[-1])
        assert float(row["best_val_psnr"]) == pytest.approx(max(psnr))
        assert float(row["final_val_ssim"]) == pytest.approx(ssim[-1])
        assert float(row["best_val_ssim"]) == pytest.approx(max(ssim))
        assert float(row["val_psnr_input"]) == pytest.approx(
            sum(metric_values(job, "val/psnr_input")) / len(psnr))
        assert int(row["steps"]) == status["global_step"] == 4
        assert float(row["wall_s"]) == pytest.approx(status["wall_seconds"])
        assert float(row["iters_per_s"]) > 0 and float(row["patches_per_s"]) > 0
        assert row["learned"] in ("True", "False")  # 4 steps: judged, either way
    for name in ("comparison_val.png", "comparison_train_loss.png", "comparison.md"):
        assert (sweep / name).stat().st_size > 1000
    assert "| model.rdb |" in (sweep / "comparison.md").read_text()

    # One W&B group for the sweep, the swept value as a tag and in the (nested) config.
    groups = set()
    for job in jobs:
        (run_dir,) = find_run_dirs(job)
        run, config = inspect_run(run_dir)
        rdb = dict(o.split("=", 1) for o in job_overrides(job))["model.rdb"]
        groups.add(run["run_group"])
        assert f"model.rdb={rdb}" in run["tags"]
        assert all(len(t) <= 64 for t in run["tags"])
        assert not any(t.startswith(("paths.", "data.root")) for t in run["tags"])
        assert read_run_record(run_dir)["group"] == run["run_group"]  # compare's fast reader
        assert config["model"]["rdb"] == rdb  # nested, so W&B can group runs by model.rdb
    assert groups == {f"quickstart@{sweep.parent.name}_{sweep.name}"}

    # Continue the sweep with the command the comparison prints: same folder, so every job
    # resumes from its last.ckpt, finds max_steps reached and validates nothing.
    markdown = (sweep / "comparison.md").read_text()
    command = markdown.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert f"hydra.sweep.dir={sweep}" in command
    before = {job: read_status(job) for job in jobs}
    run_entry_point(*shlex.split(command)[1:], timeout=400)
    assert job_dirs(sweep) == jobs  # no new sweep folder, no new job folders
    subprocess.run([sys.executable, "-m", "sweeps.compare", str(sweep), "--no-plots", "--quiet"],
                   env=subprocess_env(PYTHONPATH=str(REPO)), timeout=120, check=True)
    table = read_table(sweep)
    for job in jobs:
        first, status = before[job], read_status(job)
        assert status["status"] == "completed" and status["attempts"] == 2
        assert status["started"] == first["started"]  # the job's start, not the relaunch's
        assert [s["status"] for s in status["segments"]] == ["completed", "completed"]
        assert status["wall_seconds"] == pytest.approx(
            first["wall_seconds"] + status["segments"][1]["wall_seconds"])
        # The first segment's metrics survive a relaunch that reports only best/val/psnr.
        assert set(first["metrics"]) <= set(status["metrics"])
        assert status["metrics"]["val/psnr"] == first["metrics"]["val/psnr"]
        assert float(table[str(job)]["wall_s"]) == pytest.approx(status["wall_seconds"])


@pytest.mark.slow
def test_one_failing_job_does_not_stop_the_sweep(synthetic_sid: Path, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    """A DarkrawError (a data error at lr 3e-4) and a plain RuntimeError (a bug, at lr 7e-4)
    first, then a good job. (A wrong setting such as lr -1 refuses the sweep before any job.)"""
    sweep = tmp_path / "sweep"
    helper = "tests.health_helpers.FailAtLearningRate"
    proc = run_entry_point("train.py", "-m", "optimizer.lr=0.0003,0.0007,0.0005",
                           f"+callbacks.bug._target_={helper}", "+callbacks.bug.lr=0.0007",
                           f"+callbacks.data_fault._target_={helper}",
                           "+callbacks.data_fault.lr=0.0003",
                           "+callbacks.data_fault.data_error=true", f"hydra.sweep.dir={sweep}",
                           *fast(synthetic_sid, cache_dir, tmp_path, "trainer.max_steps=2"),
                           timeout=400)
    assert proc.returncode == 0
    by_lr = {dict(o.split("=", 1) for o in job_overrides(j))["optimizer.lr"]: j
             for j in job_dirs(sweep)}
    assert set(by_lr) == {"0.0003", "0.0007", "0.0005"}
    for lr, error_type in (("0.0003", "DataError"), ("0.0007", "RuntimeError")):
        job = by_lr[lr]
        status = read_status(job)
        assert status["status"] == "failed" and status["error_type"] == error_type
        assert (job / "FAILED").is_file()
        assert error_type in (job / "traceback.txt").read_text()
        assert "Traceback" in (job / "traceback.txt").read_text()
    good = by_lr["0.0005"]
    assert read_status(good)["status"] == "completed"
    assert not (good / "FAILED").exists() and metric_values(good, "val/psnr")

    assert subprocess.run([sys.executable, "-m", "sweeps.compare", str(sweep), "--no-plots",
                           "--quiet"], env=subprocess_env(PYTHONPATH=str(REPO)),
                          timeout=120).returncode == 0
    table = {r["optimizer.lr"]: r for r in read_table(sweep).values()}
    assert (table["0.0003"]["status"] == "failed"
            and "simulated data error" in table["0.0003"]["error"])
    assert table["0.0007"]["status"] == "failed"
    assert table["0.0005"]["status"] == "completed"
    assert "## Jobs that did not finish" in (sweep / "comparison.md").read_text()


@pytest.mark.slow
def test_optuna_search_survives_a_failed_trial(synthetic_sid: Path, cache_dir: Path,
                                               tmp_path: Path) -> None:
    """Two trials, lr in {-1, 5e-4}: under Optuna a failed job is a FAIL trial, not the end.

    The random sampler with seed 0 draws 5e-4 then -1 (optuna 2.10). The loss weight is fixed
    on the command line, which takes it out of the search space.
    """
    sweep = tmp_path / "sweep"
    run_entry_point("train.py", "+sweep=optuna", "hydra/sweeper/sampler=random",
                    "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
                    "optimizer.lr=choice(-1,0.0005)", "loss.ms_ssim_weight=0.2",
                    f"hydra.sweep.dir={sweep}",
                    *fast(synthetic_sid, cache_dir, tmp_path, "trainer.max_steps=2"),
                    timeout=400)
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_params["optimizer.lr"] == 0.0005
    assert math.isfinite(result.best_value)
    statuses = {dict(o.split("=", 1) for o in job_overrides(j))["optimizer.lr"]:
                read_status(j)["status"] for j in job_dirs(sweep)}
    assert statuses == {"0.0005": "completed", "-1": "failed"}
    # The comparison's Command: line (what continues the study) needs the sweep's multirun.yaml,
    # which Hydra's Optuna sweeper does not write.
    from sweeps.compare import collect

    command = collect(sweep).command or ""
    assert command.startswith("python train.py -m +sweep=optuna ")
    assert "hydra.sweeper.n_trials=2" in command and f"hydra.sweep.dir={sweep}" in command


@pytest.mark.slow
def test_named_sweep_is_found_from_any_directory(tmp_path: Path) -> None:
    proc = run_entry_point("train.py", "+sweep=rdb", "--cfg", "hydra", cwd=tmp_path, timeout=120)
    assert "model.rdb: after,before" in proc.stdout
    assert "mode: MULTIRUN" in proc.stdout


@pytest.mark.slow
def test_rerun_optuna_sweep_continues_its_study(synthetic_sid: Path, cache_dir: Path,
                                                tmp_path: Path) -> None:
    """The same command again keeps finished trials and reruns the one a kill left RUNNING."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    command = ["+sweep=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
               "optimizer.lr=choice(0.0005,0.0003)", "loss.ms_ssim_weight=0.2",
               f"hydra.sweep.dir={sweep}",
               *fast(synthetic_sid, cache_dir, tmp_path, "trainer.max_steps=2")]
    run_entry_point("train.py", *command, "hydra.sweeper.n_trials=1", timeout=400)
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name="darkraw_lr_loss", storage=storage)
    (first,) = study.trials
    assert first.state == TrialState.COMPLETE
    # What a sweep killed during its second trial leaves: that trial RUNNING, never told.
    other = 0.0003 if first.params["optimizer.lr"] == 0.0005 else 0.0005
    study.enqueue_trial({"optimizer.lr": other})
    study.ask({"optimizer.lr": CategoricalDistribution((0.0005, 0.0003))})

    proc = run_entry_point("train.py", *command, "hydra.sweeper.n_trials=2", timeout=400)
    assert "1 of 2 trials finished, 1 interrupted one(s) asked again first" in proc.stderr + \
        proc.stdout
    states = [(t.state, t.params["optimizer.lr"]) for t in
              optuna.load_study(study_name="darkraw_lr_loss", storage=storage).trials]
    assert states == [(TrialState.COMPLETE, first.params["optimizer.lr"]),
                      (TrialState.FAIL, other), (TrialState.COMPLETE, other)]  # 1 new trial only
    lrs = sorted(dict(o.split("=", 1) for o in job_overrides(j))["optimizer.lr"]
                 for j in job_dirs(sweep))
    assert lrs == ["0.0003", "0.0005"]  # the rerun trial used the interrupted one's folder
    assert OmegaConf.load(sweep / "optimization_results.yaml").name == "optuna"


def test_a_sweep_trained_before_to_another_length_is_pointed_at(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """trainer.max_steps names the job folders: "the same sweep, longer" started every job
    from scratch in new folders, with the earlier sweep's checkpoints beside them unused."""
    from darkraw.cli import exit_on_composition_error

    earlier = tmp_path / "outputs" / "quickstart" / "multirun" / "2026-12-01" / "10-00-00"

    def job(name: str, overrides: list[str], checkpoint: bool = True) -> Path:
        return recorded_run(earlier / name, overrides, checkpoint)

    root = f"paths.root_dir={tmp_path}"
    after = job("rdb_after", ["model.rdb=after", "trainer.max_steps=100", root])
    job("rdb_before", ["model.rdb=before", "trainer.max_steps=100", root], checkpoint=False)
    job("lr", ["model.rdb=after", "trainer.max_steps=100", "optimizer.lr=0.01", root])
    args = ["-m", "model.rdb=after,before", "trainer.max_steps=200", root]
    exit_on_composition_error("train", args)  # a warning, not a refusal
    err = capsys.readouterr().err
    assert err.startswith(
        "darkraw: warning: 1 of the 2 jobs of this sweep were trained before to another "
        f"trainer.max_steps, with a checkpoint, in {earlier}; this sweep trains them from scratch "
        "in new folders (trainer.max_steps names them). To train one of those jobs longer "
        "instead, run it alone in its folder, e.g. the first (trained to trainer.max_steps=100): "
        f"python train.py model.rdb=after trainer.max_steps=200 {root} hydra.run.dir={after}"), err
    # Named with hydra.sweep.dir (Hydra's overrides are not the jobs'): found beside them.
    exit_on_composition_error("train", [*args, f"hydra.sweep.dir={earlier}",
                                        "hydra/launcher=local", "hydra.launcher.timeout_min=60"])
    assert "1 of the 2 jobs of this sweep were trained before" in capsys.readouterr().err
    # The same length is the same sweep again, not one to train longer.
    exit_on_composition_error("train", ["-m", "model.rdb=after,before", "trainer.max_steps=100",
                                        root])
    assert capsys.readouterr().err == ""

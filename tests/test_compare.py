"""The sweep comparison (``python -m sweeps.compare``) on sweep folders built from files.

Fabricated folders have exactly the layout a real multirun leaves (``.hydra/overrides.yaml``,
``.hydra/hydra.yaml``, ``csv/metrics.csv``, ``job_status.json``, the sweep's ``multirun.yaml``),
so every rule is checked against known numbers in milliseconds; tests/test_sweeps.py checks the
same tool on real sweeps.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeps import compare
from sweeps.compare import LearningRule, collect, main, read_metrics, write_all

LEARNING_PSNR = [(99, 20.0), (199, 24.0), (299, 26.5)]
LEARNING_SSIM = [(99, 0.50), (199, 0.62), (299, 0.70)]


def write_job(sweep: Path, overrides: Sequence[str], num: int, *,
              psnr: Sequence[tuple[int, float]] = LEARNING_PSNR,
              ssim: Sequence[tuple[int, float]] = LEARNING_SSIM, psnr_input: float = 18.0,
              losses: Sequence[float] = (0.5, 0.4, 0.3), iters: Sequence[float] = (2.0, 4.0, 5.0),
              status: str | None = "completed", global_step: int = 300,
              wall_seconds: float = 120.0, error: str | None = None) -> Path:
    """A job folder as train.py leaves it (Lightning CSVLogger layout: one row per log call)."""
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    (job / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {"job": {"num": num}}}))
    (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (job / "csv").mkdir()
    columns = ["epoch", "step", "train/loss", "perf/iters_per_sec", "perf/patches_per_sec",
               "val/psnr", "val/ssim", "val/psnr_input"]
    with open(job / "csv" / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for i, (loss, rate) in enumerate(zip(losses, iters, strict=False)):
            writer.writerow({"epoch": 0, "step": i * 100 + 49, "train/loss": loss,
                             "perf/iters_per_sec": rate, "perf/patches_per_sec": rate * 8})
        for (step, p), (_, s) in zip(psnr, ssim, strict=True):
            writer.writerow({"epoch": 0, "step": step, "val/psnr": p, "val/ssim": s,
                             "val/psnr_input": psnr_input})
    if status is not None:
        record = {"status": status, "wall_seconds": wall_seconds, "global_step": global_step,
                  "host": "elsewhere", "pid": 1}
        if error:
            record.update(error_type="ConfigError", error=error)
        (job / "job_status.json").write_text(json.dumps(record))
    return job


def write_multirun(sweep: Path, task: Sequence[str], params: dict[str, str] | None = None,
                   hydra: Sequence[str] = ()) -> None:
    """The sweep's ``multirun.yaml``: Hydra splits the command line into hydra and task lists."""
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
               "max_batch_size": None, "params": params or {}}
    config = {"hydra": {"sweeper": sweeper,
                        "overrides": {"hydra": list(hydra), "task": list(task)}}}
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml(config))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_values_come_from_each_jobs_metrics(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_multirun(sweep, ["model.rdb=after,before"])
    write_job(sweep, ["model.rdb=after"], 0,
              psnr=[(99, 20.0), (199, 25.0), (299, 24.0)], wall_seconds=61.0)
    write_job(sweep, ["model.rdb=before"], 1, iters=(1.0, 3.0, 9.0, 10.0),
              losses=(0.5, 0.4, 0.3, 0.2))

    comparison = collect(sweep)
    outputs = write_all(comparison)

    assert comparison.swept_keys == ["model.rdb"]
    rows = read_rows(outputs["csv"])
    assert [r["model.rdb"] for r in rows] == ["after", "before"]
    after, before = rows
    assert float(after["final_val_psnr"]) == 24.0  # the last validation, not the best
    assert float(after["best_val_psnr"]) == 25.0
    assert int(float(after["best_val_psnr_step"])) == 199
    assert float(after["final_val_ssim"]) == 0.70
    assert float(after["best_val_ssim"]) == 0.70
    assert float(after["val_psnr_input"]) == 18.0
    assert float(after["gain_over_input_db"]) == pytest.approx(7.0)
    assert int(after["steps"]) == 300 and float(after["wall_s"]) == 61.0
    assert float(after["iters_per_s"]) == 4.0  # median of the logged windows
    assert float(before["iters_per_s"]) == statistics.median([1.0, 3.0, 9.0, 10.0])
    assert float(before["patches_per_s"]) == statistics.median([8.0, 24.0, 72.0, 80.0])
    assert after["status"] == before["status"] == "completed"
    assert after["learned"] == before["learned"] == "True"
    for name in ("comparison_val.png", "comparison_train_loss.png", "comparison.md"):
        assert (sweep / name).stat().st_size > 0
    markdown = (sweep / "comparison.md").read_text()
    assert "| model.rdb |" in markdown and "| after | completed | 24.00 | 25.00 (199)" in markdown
    # The command continues this sweep: without hydra.sweep.dir it would start a new one.
    assert f"python train.py -m model.rdb=after,before hydra.sweep.dir={sweep.resolve()}\n" \
        in markdown


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        # SSIM stuck near 0.52 and PSNR flat: the ablation study's failure.
        ({"psnr": [(99, 20.0), (199, 20.1), (299, 20.2)],
          "ssim": [(99, 0.520), (199, 0.521), (299, 0.522)]}, "flat"),
        # Rising, but never better than the amplified input.
        ({"psnr": [(99, 10.0), (199, 14.0), (299, 17.0)], "psnr_input": 18.0}, "below input"),
        ({"losses": (0.5, math.nan, math.inf)}, "non-finite loss"),
    ],
)
def test_did_not_learn_is_flagged_with_its_reason(tmp_path: Path, kwargs: dict,
                                                  flag: str) -> None:
    write_job(tmp_path, ["model.rdb=after"], 0, **kwargs)
    job = collect(tmp_path).jobs[0]
    assert job.learned is False
    assert flag in job.flags


def test_learning_rule_edge_cases() -> None:
    rule = LearningRule()
    # One of PSNR / SSIM moving is learning: only both flat is flagged.
    learned, _ = rule.judge({"val/psnr": [(1, 20.0), (2, 20.1)],
                             "val/ssim": [(1, 0.5), (2, 0.6)]}, {})
    assert learned is True
    learned, reasons = rule.judge({"val/psnr": [(1, 20.0)]}, {})
    assert learned is None and "too early" in reasons
    # Thresholds are options: a stricter rule flags the same run.
    series = {"val/psnr": [(1, 20.0), (2, 21.0)], "val/ssim": [(1, 0.5), (2, 0.505)]}
    assert rule.judge(series, {})[0] is True
    assert LearningRule(min_psnr_rise_db=2.0).judge(series, {})[0] is False


def test_thresholds_from_the_command_line(tmp_path: Path) -> None:
    write_job(tmp_path, ["model.rdb=after"], 0)  # +6.5 dB over its first validation
    assert main([str(tmp_path), "--quiet", "--no-plots"]) == 0
    assert read_rows(tmp_path / "comparison.csv")[0]["learned"] == "True"
    assert main([str(tmp_path), "--quiet", "--no-plots", "--min-gain-over-input", "10",
                 "--strict"]) == 2
    row = read_rows(tmp_path / "comparison.csv")[0]
    assert row["learned"] == "False" and "amplified input" in row["reasons"]


def test_seed_axis_gives_mean_and_sample_std(tmp_path: Path) -> None:
    write_multirun(tmp_path, ["+sweep=rdb_seeds"], {"model.rdb": "after,before", "seed": "1,2,3"})
    finals = {"after": [24.0, 25.0, 27.0], "before": [26.0, 26.5, 0.0]}
    num = 0
    for rdb, values in finals.items():
        for seed, final in zip((1, 2, 3), values, strict=True):
            failed = rdb == "before" and seed == 3
            write_job(tmp_path, [f"model.rdb={rdb}", f"seed={seed}", "+sweep=rdb_seeds"], num,
                      psnr=[(99, 20.0), (199, final - 0.5), (299, final)],
                      wall_seconds=60.0 * seed, status="failed" if failed else "completed",
                      error="boom" if failed else None)
            num += 1

    comparison = collect(tmp_path)
    outputs = write_all(comparison)

    assert comparison.seed_key == "seed"
    rows = {r["model.rdb"]: r for r in read_rows(outputs["seeds_csv"])}
    after, before = rows["after"], rows["before"]
    assert float(after["final_val_psnr_mean"]) == pytest.approx(statistics.mean([24, 25, 27]))
    assert float(after["final_val_psnr_std"]) == pytest.approx(statistics.stdev([24, 25, 27]))
    assert float(after["wall_s_mean"]) == pytest.approx(120.0)
    assert (after["n"], after["n_jobs"], after["n_not_completed"]) == ("3", "3", "0")
    # The failed seed is left out of the statistics and counted apart.
    assert float(before["final_val_psnr_mean"]) == pytest.approx(26.25)
    assert float(before["final_val_psnr_std"]) == pytest.approx(statistics.stdev([26.0, 26.5]))
    assert (before["n"], before["n_not_completed"], before["seeds"]) == ("2", "1", "1,2")
    markdown = (tmp_path / "comparison.md").read_text()
    assert "mean ± sample std" in markdown and "25.33 ± 1.53" in markdown
    assert "Common to all jobs: `+sweep=rdb_seeds`" in markdown  # with its `+`, as typed


def test_a_seed_key_the_sweep_does_not_sweep_is_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was accepted in silence: the seed table was just not there, as if it had no seeds."""
    write_multirun(tmp_path, ["model.rdb=after,before", "data.seed=1,2", "trainer.max_steps=300"])
    for num, (rdb, seed) in enumerate([("after", 1), ("after", 2), ("before", 1),
                                       ("before", 2)]):
        write_job(tmp_path, [f"model.rdb={rdb}", f"data.seed={seed}", "trainer.max_steps=300"],
                  num)
    assert main([str(tmp_path), "--quiet", "--no-plots", "--seed-key", "data.sed"]) == 1
    assert capsys.readouterr().err.strip() == (
        "darkraw: error: --seed-key data.sed: no job of the sweep sets data.sed (did you mean "
        "--seed-key data.seed?); the sweep's swept keys are model.rdb, data.seed (leave "
        "--seed-key out to compare the jobs one by one)")
    assert main([str(tmp_path), "--quiet", "--no-plots", "--seed-key",
                 "trainer.max_steps"]) == 1
    assert "every job has trainer.max_steps=300: there is nothing to average over" in \
        capsys.readouterr().err
    assert not (tmp_path / "comparison.md").exists()
    assert main([str(tmp_path), "--quiet", "--no-plots", "--seed-key", "data.seed"]) == 0
    assert (tmp_path / "comparison_seeds.csv").is_file()
    assert main([str(tmp_path), "--quiet", "--no-plots"]) == 0  # no `seed` axis: no table


def test_failed_unfinished_and_never_started_jobs_are_listed(tmp_path: Path) -> None:
    write_multirun(tmp_path, ["model.rdb=after,before", "seed=1,2"])
    write_job(tmp_path, ["model.rdb=after", "seed=1"], 0)
    write_job(tmp_path, ["model.rdb=after", "seed=2"], 1, status="failed",
              error="optimizer.lr=-1 is not allowed")
    write_job(tmp_path, ["model.rdb=before", "seed=1"], 2, status="running")  # pid 1 elsewhere
    # model.rdb=before,seed=2 never started (the sweep was killed).

    comparison = collect(tmp_path)
    write_all(comparison, plots=False)

    statuses = {tuple(j.overrides): j.status for j in comparison.jobs}
    assert statuses == {
        ("model.rdb=after", "seed=1"): "completed",
        ("model.rdb=after", "seed=2"): "failed",
        ("model.rdb=before", "seed=1"): "incomplete",
        ("model.rdb=before", "seed=2"): "not started",
    }
    markdown = (tmp_path / "comparison.md").read_text()
    assert "## Jobs that did not finish" in markdown
    assert "failed: ConfigError: optimizer.lr=-1 is not allowed" in markdown
    assert "- rdb=before, seed=2: not started" in markdown  # by its values: no folder to name
    assert main([str(tmp_path), "--quiet", "--no-plots", "--strict"]) == 2


def test_resumed_run_keeps_the_last_value_per_step(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,val/psnr,train/loss\n99,20,0.5\n199,21,nan\n199,22,0.4\n")
    series, nonfinite = read_metrics(metrics)
    assert series["val/psnr"] == [(99, 20.0), (199, 22.0)]
    assert nonfinite == {"train/loss": 1}


def test_missing_or_empty_folder_is_an_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope"), "--quiet"]) == 1
    assert main([str(tmp_path), "--quiet"]) == 1
    assert "no job folders" in capsys.readouterr().err


def test_a_job_folder_or_a_file_is_named_as_such(tmp_path: Path, capsys) -> None:
    """Passing a job's folder instead of its sweep's must not say it holds no .hydra."""
    job = write_job(tmp_path / "sweep", ["model.rdb=after"], 0)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n  job:\n    num: 0\n")
    assert main([str(job), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("darkraw: error: ") and err.count("\n") == 1
    assert err.strip().endswith(f"is one job's folder, not a sweep's: pass the sweep folder "
                                f"that holds the job folders, {tmp_path / 'sweep'}")
    # A single run's folder (hydra.mode RUN) is not called a job of a sweep.
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    assert main([str(job), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "is a single run's folder (train.py without -m), not a sweep's" in err
    assert err.strip().endswith(f"pass the folder that holds them, {tmp_path / 'sweep'}")
    assert main([str(tmp_path / "sweep"), "--quiet", "--no-plots"]) == 0  # as it says
    assert main([str(job / ".hydra" / "overrides.yaml"), "--quiet"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_folder_above_the_sweeps_is_refused(tmp_path: Path, capsys) -> None:
    """``outputs/<experiment>/multirun/<date>`` (the time left off) mixes several sweeps' jobs."""
    for name in ("12-00-00", "13-00-00"):
        write_job(tmp_path / name, ["model.rdb=after"], 0)
        write_multirun(tmp_path / name, ["model.rdb=after,before"])
    assert main([str(tmp_path), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"darkraw: error: {tmp_path} is not a sweep folder but holds 2 sweep")
    assert str(tmp_path / "12-00-00") in err and err.count("\n") == 1
    assert not (tmp_path / "comparison.md").exists()
    assert main([str(tmp_path / "13-00-00"), "--quiet", "--no-plots"]) == 0


def test_labels_are_short_but_unique(tmp_path: Path) -> None:
    write_job(tmp_path, ["model.rdb=after", "scheduler.gamma=1"], 0)
    write_job(tmp_path, ["model.rdb=before", "scheduler.gamma=0.02"], 1)
    comparison = collect(tmp_path)
    assert sorted(compare.run_labels(comparison).values()) == [
        "rdb=after, gamma=1", "rdb=before, gamma=0.02"]


def test_command_and_common_overrides_are_as_typed(tmp_path: Path, monkeypatch,
                                                   capsys) -> None:
    """What the user typed, so the lines can be pasted back: ``+`` kept, ``false`` not ``False``.

    Hydra records ``-m`` as ``hydra.mode=MULTIRUN`` (not repeated) and keeps other hydra
    overrides (the sweep folder, the launcher) apart from the task's.
    """
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "outputs" / "multirun" / "rdb-cpu"
    sweep.mkdir(parents=True)
    write_multirun(sweep, ["+sweep=rdb", "preflight.enabled=false", "scheduler.milestones=[100]"],
                   {"model.rdb": "after,before"},
                   hydra=["hydra.sweep.dir=outputs/multirun/rdb-cpu", "hydra.mode=MULTIRUN",
                          "hydra/launcher=basic"])
    for num, rdb in enumerate(("after", "before")):
        # A job's overrides.yaml holds Hydra's rendering of the values.
        write_job(sweep, [f"model.rdb={rdb}", "+sweep=rdb", "preflight.enabled=False",
                          "scheduler.milestones=[100]"], num)

    comparison = collect(sweep)
    assert comparison.swept_keys == ["model.rdb"]
    assert list(comparison.common.values()) == [
        "+sweep=rdb", "preflight.enabled=false", "scheduler.milestones=[100]"]
    assert comparison.command == (
        "python train.py -m +sweep=rdb preflight.enabled=false 'scheduler.milestones=[100]' "
        "hydra.sweep.dir=outputs/multirun/rdb-cpu hydra/launcher=basic")
    write_all(comparison, plots=False)
    markdown = (sweep / "comparison.md").read_text()
    assert comparison.command in markdown
    assert ("Common to all jobs: `+sweep=rdb`, `preflight.enabled=false`, "
            "`scheduler.milestones=[100]`") in markdown
    compare.print_rich(comparison)
    assert "common: +sweep=rdb preflight.enabled=false" in capsys.readouterr().out

    # Compared from elsewhere (or moved): the typed relative folder would name another one.
    monkeypatch.chdir(sweep)
    assert collect(sweep).command.endswith(f"hydra.sweep.dir={sweep.resolve()} "
                                           "hydra/launcher=basic")


def test_wandb_hint_names_a_job_that_has_a_wandb_folder(tmp_path: Path) -> None:
    """The first job failed before W&B started (no ``wandb/``): the example must be another."""
    write_job(tmp_path, ["model.rdb=sideways"], 0, status="failed", error="not allowed")
    good = write_job(tmp_path, ["model.rdb=before"], 1)
    (good / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)

    lines = compare.wandb_lines(collect(tmp_path))

    assert lines[0].startswith("W&B: 1 offline run(s) in 1 of 2 job(s)")
    assert lines[-1].strip() == f"wandb leet '{good}/wandb'"
    assert "sideways" not in "\n".join(lines)
    # No job with an offline run: no W&B section at all (nothing to point at).
    (good / "wandb" / "offline-run-20260101_000000-abc").rmdir()
    assert compare.wandb_lines(collect(tmp_path)) == []


def test_a_finished_job_without_readable_metrics_is_named_and_fails_strict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged metrics.csv crashed the whole comparison (UnicodeDecodeError); an empty or
    missing one gave a row of "-" that passed --strict."""
    write_job(tmp_path, ["seed=1"], 0)
    empty = write_job(tmp_path, ["seed=2"], 1) / "csv" / "metrics.csv"
    empty.write_text("")
    damaged = write_job(tmp_path, ["seed=3"], 2) / "csv" / "metrics.csv"
    damaged.write_bytes(damaged.read_bytes()[:40] + b"\x00\xff garbage")
    missing = write_job(tmp_path, ["seed=4"], 3) / "csv" / "metrics.csv"
    missing.unlink()
    assert main([str(tmp_path), "--quiet", "--no-plots", "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"darkraw: warning: seed=2: {empty} holds no metrics" in err
    assert f"darkraw: warning: seed=3: {damaged} cannot be read (UnicodeDecodeError" in err
    assert f"darkraw: warning: seed=4: {missing} is missing" in err
    jobs = {job.name: job for job in collect(tmp_path).jobs}
    assert jobs["seed=1"].learned is True
    assert [jobs[f"seed={n}"].flags for n in (2, 3, 4)] == [["no metrics"]] * 3
    assert (tmp_path / "comparison.md").is_file()  # the others are still compared


@pytest.mark.parametrize("option", [["--min-ssim-rise", "nan"], ["--min-psnr-rise", "inf"],
                                    ["--min-val-points", "0"]])
def test_thresholds_that_would_judge_nothing_are_refused(tmp_path: Path, option: list[str],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """nan made every job "learned"; 0 validations judged jobs on nothing."""
    write_job(tmp_path, ["seed=1"], 0)
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path), "--quiet", "--no-plots", *option])
    assert caught.value.code == 2 and option[0] in capsys.readouterr().err

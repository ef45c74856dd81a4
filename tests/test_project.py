"""The project's own promises: CI runs the README's test command, configs stay parseable."""

from __future__ import annotations

import re

from tests.helpers import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = readme_commands()[1].strip()
    assert test_command == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert f"\n{test_command}\n" in ci
    assert "pip install --quiet torch==2.13.0" in ci  # the CPU build that lies on disk


def test_readme_setup_command_installs_and_runs_the_default_job() -> None:
    setup = readme_commands()[0]
    assert "pip install torch==2.13.0" in setup and "pip install -e '.[dev]'" in setup
    assert setup.rstrip().endswith("python train.py")


def test_readme_carries_the_patent_notice() -> None:
    assert "202141026548" in (REPO / "README.md").read_text()


def test_every_paths_key_leaves_the_run_folder_name_alone() -> None:
    """README: overrides of ``paths.*`` keep the run folder (a data set moved to another disk
    still resumes); a key missing from exclude_keys names a new folder and starts over."""
    from omegaconf import OmegaConf

    paths = OmegaConf.load(REPO / "conf" / "paths" / "default.yaml")
    hydra_cfg = OmegaConf.load(REPO / "conf" / "hydra" / "default.yaml")  # package: hydra
    excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys)
    missing = sorted(f"paths.{key}" for key in paths if f"paths.{key}" not in excluded)
    assert not missing, f"add {missing} to exclude_keys in conf/hydra/default.yaml"

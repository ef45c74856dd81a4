"""Shared test settings: deterministic, offline, and small enough for 2 CPU cores."""

from __future__ import annotations

import json
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest
import torch

#: Test processes for ``-n auto`` (pyproject's addopts): one per core, at most this many. More
#: gain little (the slowest tests alone take a minute) and each holds its own copy of torch.
MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(MAX_TEST_PROCESSES, os.cpu_count() or 1))


# Under xdist each test process gets its share of the cores: torch's default of one thread per
# core in every process oversubscribes them (on 2 cores, 2 threads ran each step ~3x slower).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_log_once() -> None:
    """Each test sees the once-per-process data lines as a fresh process would."""
    from darkraw import log_once

    log_once._said.clear()


@pytest.fixture(scope="session")
def synthetic_sid(tmp_path_factory: pytest.TempPathFactory):
    """A tiny synthetic SID-style set (real DNG files), generated once per test session."""
    from datamodules.synthetic import generate_synthetic_sid
    from tests.helpers import FIXTURE_SET

    root = tmp_path_factory.mktemp("synthetic_sid")
    yield generate_synthetic_sid(root, **FIXTURE_SET, progress=False)
    # A test that points the synthetic data config at this set without FIXTURE_SET (see
    # tests/helpers.fixture_data_overrides) makes it regenerate: other tests then see other data.
    parameters = json.loads((root / ".darkraw_synthetic.json").read_text())["parameters"]
    changed = {k: parameters.get(k) for k, v in FIXTURE_SET.items() if parameters.get(k) != v}
    assert not changed, f"a test regenerated the shared synthetic_sid fixture: {changed}"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for in-process training tests: on 2 shared cores, 2 threads ran each
    step about 3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """A packed-data cache folder shared by the tests of one module."""
    return tmp_path_factory.mktemp("cache")

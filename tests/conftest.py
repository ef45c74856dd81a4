"""Shared test settings: deterministic, offline, and small enough for 2 CPU cores."""

from __future__ import annotations

import json
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest
import torch


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

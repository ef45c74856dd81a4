"""OmegaConf resolvers that the configs use; registered once, before Hydra builds paths."""

from __future__ import annotations

from omegaconf import OmegaConf


def run_dirname(override_dirname: str) -> str:
    """A folder name from a job's overrides: stable across relaunches, so resume finds it."""
    cleaned = override_dirname.replace("/", "_").replace("\\", "_").strip()
    return cleaned or "default"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("darkraw.dirname"):
        OmegaConf.register_new_resolver("darkraw.dirname", run_dirname)


register_resolvers()

"""darkraw's Hydra launcher: Hydra only instantiates plugin classes defined under ``hydra_plugins``.

Kept light (Hydra imports every ``hydra_plugins`` module at start-up); the logic and the reasons
are in sweeps/local_launcher.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher


class InterruptibleLocalLauncher(LocalLauncher):
    """``hydra/launcher=local``: submitit's local launcher, whose jobs save on Ctrl-C."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from sweeps.local_launcher import launch_keeping_ctrl_c_for_the_jobs

        assert self.config is not None
        return launch_keeping_ctrl_c_for_the_jobs(
            lambda: super(InterruptibleLocalLauncher, self).launch(job_overrides,
                                                                   initial_job_idx),
            Path(str(self.config.hydra.sweep.dir)))

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        from sweeps.local_launcher import restore_ctrl_c_in_the_job

        restore_ctrl_c_in_the_job()
        return super().__call__(*args, **kwargs)

"""darkraw's Hydra sweeper: Hydra only instantiates plugin classes defined under ``hydra_plugins``.

Kept light (Hydra imports every ``hydra_plugins`` module at start-up); the logic and the reasons
are in sweeps/resumable_optuna.py.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """``hydra/sweeper: optuna`` with the study kept in the sweep folder and continued on rerun."""

    def sweep(self, arguments: list[str]) -> Any:
        # Imported here: Hydra imports every hydra_plugins module at each start-up.
        from sweeps.resumable_optuna import (
            continue_study,
            continued_sampler,
            quiet_optuna,
            save_sweep_config,
            sweep_folder_storage,
        )

        quiet_optuna()
        import optuna

        impl = self.sweeper
        save_sweep_config(impl.config)
        if impl.study_name is None:  # Optuna names it anew each time: nothing to continue
            return super().sweep(arguments)
        if impl.storage is None:
            impl.storage = sweep_folder_storage(impl.config.hydra.sweep.dir)
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:  # a new study: nothing to continue
            return super().sweep(arguments)
        impl.sampler = continued_sampler(impl.config.hydra.sweeper.sampler, len(study.trials),
                                         impl.sampler)
        impl.n_trials, impl.job_idx = continue_study(study, impl.n_trials)
        return super().sweep(arguments)

"""Named Hydra sweeps (sweeps/conf/sweep/) and the offline sweep comparison (sweeps.compare)."""

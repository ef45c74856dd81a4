"""A CSV logger whose ``metrics.csv`` survives a resume.

Lightning 2.6.6's ``CSVLogger`` *deletes* an existing ``metrics.csv`` when its folder is not
empty (``lightning.fabric.loggers.csv_logs._ExperimentWriter._check_log_dir_exists``, with only a
warning), so a killed run that resumed into the same folder kept only the metrics logged after the
resume: the learning curve of the first part of the run was gone.

:class:`ResumableCSVLogger` appends instead. A killed run logged a few steps after its last
checkpoint that the resumed run logs again; rows of the old file at or after the first step the
resumed run writes are dropped, so every step appears once, as in an uninterrupted run. A run
that starts from scratch (``resume=false``, or no checkpoint) still starts a fresh file.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Keeps the old rows (and their columns); drops the tail the resumed run writes again."""

    def __init__(self, log_dir: str, append: bool) -> None:
        self._append = append
        super().__init__(log_dir=log_dir)
        self._trim_pending = append and self._fs.isfile(self.metrics_file_path)
        if self._trim_pending:
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                header = next(csv.reader(handle), [])
            self.metrics_keys = sorted(header)

    def _check_log_dir_exists(self) -> None:
        if not self._append:
            super()._check_log_dir_exists()

    def save(self) -> None:
        if self._trim_pending and self.metrics:
            self._trim_pending = False
            first_new = min(int(row["step"]) for row in self.metrics if "step" in row)
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                old = [row for row in csv.DictReader(handle)
                       if not row.get("step") or int(float(row["step"])) < first_new]
            self._record_new_keys()
            with self._fs.open(self.metrics_file_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(old)
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to ``metrics.csv`` when the run resumes (``append=True``)."""

    def __init__(self, *args: Any, append: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append = append

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir, append=self.append)
        return self._experiment


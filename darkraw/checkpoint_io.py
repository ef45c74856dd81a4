"""Checkpoint files that are complete or absent, never half-written, corrupt or NaN.

Resuming depends on ``last.ckpt`` being loadable whenever the process dies, including mid-write.
Lightning 2.6.6's ``TorchCheckpointIO`` serialises to memory and writes through an fsspec
transaction whose temporary file is made by ``tempfile.mkstemp()`` in the *system* temp folder
(``fsspec.implementations.local.LocalFileOpener``), then ``shutil.move``\\ s it over the target.
When /tmp is another file system (tmpfs, a small root disk) that move is a copy: a kill during it
leaves a truncated checkpoint, and a large checkpoint can fill /tmp. Nothing is fsynced either,
so a power loss can leave an empty file behind a completed rename.

:class:`AtomicCheckpointIO` writes next to the target instead (``.<name>.partial`` in the same
folder, so the rename is atomic on POSIX), fsyncs the file, ``os.replace``\\ s it over the target
and fsyncs the folder. A kill at any moment leaves either the previous checkpoint or the new one;
the partial file never ends in ``.ckpt``, so nothing mistakes it for a checkpoint, and the next
save of the same name overwrites it.

Before writing it also refuses two things that would poison a resume: a checkpoint whose weights
or optimizer state are not finite (the run diverged; the previous checkpoint is kept), and one
that does not fit on the disk (:class:`~darkraw.errors.DiskSpaceError` with the size needed,
checked before a byte is written, and again if the write itself runs out of space).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from darkraw.disk import GB, ensure_free_space, is_disk_full
from darkraw.errors import DiskSpaceError, TrainingHealthError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
MB = 1024**2


def partial_path(path: str | Path) -> Path:
    """The temporary file a checkpoint is written to: hidden, same folder, not ``*.ckpt``."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot open folders (ignored there)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}[{index}]")


def nonfinite_tensors(value: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths below ``prefix``) of the floating-point tensors in ``value``, a
    tensor or nested dicts and lists of them, that hold NaN or inf."""
    return [name for name, tensor in _tensors(value, prefix)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def nonfinite_entries(checkpoint: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in the weights or optimizer state that hold NaN or inf."""
    return [name for section in ("state_dict", "optimizer_states")
            for name in nonfinite_tensors(checkpoint.get(section, {}), section)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, fsynced, space-checked, finite-only saves.

    Args:
        reserve_gb: free space to leave on the disk beyond the checkpoint itself, so the write
            cannot take the last bytes that logs, metrics and W&B need.
        check_finite: refuse to write weights or optimizer state that hold NaN or inf.
    """

    def __init__(self, reserve_gb: float = 0.1, check_finite: bool = True) -> None:
        super().__init__()
        if reserve_gb < 0:
            raise ValueError(f"checkpoint_io.reserve_gb={reserve_gb} must be >= 0")
        self.reserve_gb = reserve_gb
        self.check_finite = check_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            # Object stores have their own atomic uploads; keep Lightning's behaviour there.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(path)
        if self.check_finite:
            bad = nonfinite_entries(checkpoint)
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise TrainingHealthError(
                    f"refusing to write checkpoint {target} at step "
                    f"{checkpoint.get('global_step', '?')}: non-finite (NaN/inf) values in "
                    f"{shown}. The previous checkpoint at that path (if any) is left intact. The "
                    "run diverged: lower optimizer.lr, check the data for NaN/inf inputs or "
                    "targets (the pre-flight check), or train with trainer.precision=32 / "
                    "bf16-mixed instead of 16-mixed."
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        ensure_free_space(target.parent, data.nbytes + self.reserve_gb * GB,
                          f"checkpoint {target.name} ({data.nbytes / MB:.1f} MB)",
                          margin_setting=f"the checkpoint plus checkpoint_io.reserve_gb="
                                         f"{self.reserve_gb} left free")
        partial = partial_path(target)
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except OSError as error:
            partial.unlink(missing_ok=True)
            if is_disk_full(error):
                raise DiskSpaceError(
                    f"the disk filled up while writing checkpoint {target} "
                    f"({data.nbytes / MB:.1f} MB needed); the previous checkpoint is intact. "
                    "Free some space or point paths.log_dir to a larger disk, then relaunch the "
                    "same command to resume."
                ) from error
            raise
        _fsync_folder(target.parent)
        log.debug("wrote checkpoint %s (%.1f MB)", target, data.nbytes / MB)

"""One training per run folder: a second launch into a folder in use is refused, by name.

Two trainings in one folder (the same command typed in two terminals, a script that starts a
run twice, two identical sweeps started in the same second) would each resume the other's
``last.ckpt``, overwrite each other's checkpoints and interleave one ``metrics.csv``, with
nothing to say so. The lock is an ``flock`` on a file in the run folder: the kernel releases it
when its holder exits, however it dies, so there is no stale lock to clean up on one machine.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from darkraw.errors import DarkrawError
from darkraw.lock_holder import describe_holder, read_holder, write_holder

log = logging.getLogger("darkraw")

LOCK_NAME = ".darkraw-run.lock"
#: How long a launch waits for a holder on another machine before refusing. A job SLURM
#: requeued can start while the file server still holds the killed job's lock; a holder on
#: this machine is alive by construction (the kernel drops a dead process's lock), so a
#: launch beside it is refused at once.
OTHER_HOST_GRACE_S = 90.0
_POLL_S = 2.0


class RunFolderInUse(DarkrawError):
    """Another live process trains in this run folder."""


class RunFolderLock:
    """Held from the start of a launch to its exit; released by closing (or by dying)."""

    def __init__(self, folder: str | Path, other_host_grace_s: float = OTHER_HOST_GRACE_S) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.other_host_grace_s = other_host_grace_s
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the folder, or raise :class:`RunFolderInUse` naming the process that has it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Windows
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until the launch ends
        waited_since: float | None = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(handle)
                other_host = holder.get("host") not in (None, socket.gethostname())
                now = time.monotonic()
                if waited_since is None and other_host and self.other_host_grace_s > 0:
                    waited_since = now
                    log.warning("%s is locked by %s; waiting up to %.0f s for it to end (a "
                                "requeued job's predecessor may still be stopping)",
                                self.folder, describe_holder(holder), self.other_host_grace_s)
                if waited_since is None or now - waited_since >= self.other_host_grace_s:
                    handle.close()
                    raise RunFolderInUse(self._in_use_message(holder)) from None
                time.sleep(_POLL_S)
            except OSError as error:  # a file system without locks (some NFS/Lustre mounts)
                handle.close()
                log.warning("could not lock %s (%s): a second launch into this folder would "
                            "not be refused", self.path, error)
                return
        write_holder(handle, command=" ".join(["python", *sys.argv]))
        self._handle = handle

    def _in_use_message(self, holder: dict[str, Any]) -> str:
        return (
            f"{self.folder} is in use by another training ({describe_holder(holder)}): two "
            "trainings in one folder would overwrite each other's checkpoints and metrics. Wait "
            "for it to end or stop it (the same command then resumes from its last.ckpt), or "
            "train into another folder (another override, or hydra.run.dir=...; "
            "hydra.sweep.dir=... for a sweep). The lock is released when that process exits; "
            f"if it ran on a machine that is gone, delete {self.path}."
        )

    def release(self) -> None:
        # The file stays: deleting a lock file lets a newcomer lock a fresh one while someone
        # who opened the old one still locks that.
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

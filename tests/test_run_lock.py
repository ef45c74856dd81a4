"""One training per run folder: real flock locks, held by other open files and other processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from darkraw.run_lock import LOCK_NAME, RunFolderInUse, RunFolderLock
from tests.helpers import REPO, subprocess_env


def test_a_second_launch_on_this_machine_is_refused_at_once_by_name(tmp_path: Path) -> None:
    first = RunFolderLock(tmp_path / "run")
    first.acquire()
    started = time.monotonic()
    with pytest.raises(RunFolderInUse) as refused:
        RunFolderLock(tmp_path / "run", other_host_grace_s=60).acquire()
    assert time.monotonic() - started < 5  # no wait: a holder here is alive by construction
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by another training (pid "
                              f"{os.getpid()} on {socket.gethostname()}, since ")
    assert "resumes from its last.ckpt" in message
    assert "python" in json.loads((tmp_path / "run" / LOCK_NAME).read_text())["command"]
    assert f"delete {tmp_path / 'run' / LOCK_NAME}" in message
    first.release()
    second = RunFolderLock(tmp_path / "run")
    second.acquire()  # released: the folder is free again
    assert second.held
    second.release()


def hold_as_if_on_another_machine(folder: Path) -> RunFolderLock:
    """A held lock whose file says what a holder on another node of a shared file system
    writes there."""
    lock = RunFolderLock(folder)
    lock.acquire()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 7, "host": "node-elsewhere",
                                                "started": time.time()}))
    return lock


def test_a_holder_on_another_machine_is_waited_for_then_refused(tmp_path: Path) -> None:
    first = hold_as_if_on_another_machine(tmp_path)
    started = time.monotonic()
    with pytest.raises(RunFolderInUse, match=r"\(pid 7 on node-elsewhere, since "):
        RunFolderLock(tmp_path, other_host_grace_s=1.0).acquire()
    assert time.monotonic() - started >= 1.0
    first.release()


def test_a_holder_that_ends_during_the_wait_hands_the_folder_over(tmp_path: Path) -> None:
    """A job SLURM requeued may start while its killed predecessor's lock is still held."""
    first = hold_as_if_on_another_machine(tmp_path)
    releaser = threading.Timer(1.0, first.release)
    releaser.start()
    second = RunFolderLock(tmp_path, other_host_grace_s=30.0)
    try:
        second.acquire()
        assert second.held
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    finally:
        releaser.join()
        second.release()


def test_a_killed_holder_leaves_no_lock_behind(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a node's cgroup) runs no clean-up: the kernel frees the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from darkraw.run_lock import RunFolderLock; "
         f"lock = RunFolderLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); "
         "time.sleep(600)"],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderInUse, match=rf"\(pid {holder.pid} on "):
            RunFolderLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    after = RunFolderLock(tmp_path)
    after.acquire()
    assert after.held
    after.release()

"""Who holds an ``flock``: written into the lock file by its holder, read by whoever waits.

The run-folder lock (darkraw/run_lock.py) and the cache build lock (datamodules/cache.py) both
name the process they wait for or refuse because of: a silent wait on a lock looks exactly like
a hang, and "in use" without a pid and a host leaves nothing to check.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import IO, Any


def write_holder(handle: IO[str], **extra: Any) -> None:
    """Record this process (pid, host, start time, ``extra``) in the lock file it holds."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.time(), **extra}))
    handle.flush()


def read_holder(handle: IO[str]) -> dict[str, Any]:
    """What the holder wrote; empty if it wrote nothing readable (yet)."""
    try:
        handle.seek(0)
        holder = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on node7, since 2026-12-04 21:14:03``, from what the holder wrote (a command in
    the file is for whoever opens it: it would bury the message)."""
    if "pid" not in holder:
        return "holder unknown"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    with contextlib.suppress(KeyError, TypeError, ValueError):
        text += ", since " + time.strftime("%Y-%m-%d %H:%M:%S",
                                           time.localtime(float(holder["started"])))
    return text

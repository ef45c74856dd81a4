"""Read the run record (group, tags, id, name) of an offline W&B run, without network or server.

Why: an offline run's ``files/`` folder holds no ``config.yaml`` or metadata in wandb 0.31: the
group and tags exist only inside the binary ``run-<id>.wandb`` transaction log. ``wandb leet
inspect --json <run dir>`` prints it (the supported way, ~1 s per run as a subprocess); this reads
the same first records directly, so the comparison can name each sweep's W&B group instantly.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
chunks with a 7-byte header each (crc32, length, type: full/first/middle/last); every record is a
``wandb.proto.wandb_internal_pb2.Record``. Anything unexpected returns None: W&B details are an
extra in the comparison, never a reason for it to fail.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = b":W&B"
_HEADER_LEN = 7
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes) -> Iterator[bytes]:
    pos, pending = _HEADER_LEN, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer: too short for a chunk header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        pos += _CHUNK_HEADER
        chunk = data[pos:pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif length == 0:  # zero padding at the end of a block
            continue
        else:
            return


def find_run_dirs(job_dir: str | Path) -> list[Path]:
    """The offline run folders (``wandb/offline-run-*``) under a job folder, oldest first."""
    root = Path(job_dir) / "wandb"
    return sorted(p for p in root.glob("offline-run-*") if p.is_dir()) if root.is_dir() else []


def read_run_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"group", "tags", "run_id", "name", "project", "job_type"}`` of an offline run, or None."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb")) if run_dir.is_dir() else [run_dir]
    if not files:
        return None
    try:
        from wandb.proto import wandb_internal_pb2 as pb

        # The run record comes second, right after the header record: 64 KiB is plenty.
        with open(files[0], "rb") as handle:
            data = handle.read(2 * _BLOCK)
        if not data.startswith(_HEADER):
            return None
        for raw in _records(data):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "run":
                run = record.run
                return {"group": run.run_group, "tags": list(run.tags), "run_id": run.run_id,
                        "name": run.display_name, "project": run.project,
                        "job_type": run.job_type}
    except Exception:  # a format change must not break the comparison
        return None
    return None

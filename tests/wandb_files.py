"""Reading offline W&B runs back from their ``.wandb`` files, for assertions on what a run logged.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
records, each a 7-byte header (crc32, length, type) and a chunk of a serialised ``Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _LAST = 1, 2, 4


def records(path: Path) -> list[Any]:
    """Every ``wandb_internal_pb2.Record`` in the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, offset = [], b"", _HEADER.size
    while offset + _CHUNK.size <= len(data):
        if _BLOCK - offset % _BLOCK < _CHUNK.size:  # block trailer
            offset += _BLOCK - offset % _BLOCK
            continue
        _, length, kind = _CHUNK.unpack_from(data, offset)
        chunk = data[offset + _CHUNK.size : offset + _CHUNK.size + length]
        offset += _CHUNK.size + length
        if kind == 0:
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


@dataclass
class OfflineRun:
    """What one offline run file holds: run attributes, config, summary and history keys/values."""

    run_id: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _items(items: Any) -> dict[str, Any]:
    """Items as a dict; a ``nested_key`` item (an image's or a table's fields) becomes a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(item.value_json)
    return out


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.job_type, run.tags = r.run_id, r.run_group, r.job_type, list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
    return run


def offline_runs(folder: Path) -> list[OfflineRun]:
    """Every offline run under ``folder`` (any depth), in file-name order."""
    return [read_run(p) for p in sorted(Path(folder).rglob("run-*.wandb"))]

"""The sweep folder as a resource: one sweeper at a time, job numbers that never go backwards,
and a corrupt state that is kept and explained rather than overwritten.

Layout (inside ``hydra.sweep.dir``): the children's job folders ``0/``, ``1/``, ... and
``exploration/`` with ``state.json``, ``.lock``, ``results/<job>.json`` (what each child returned)
and ``children/<job>.json`` (each child's node metadata, read by the child itself).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from hydra_llm.files import atomic_write_text

EXPLORATION = "exploration"
RESULTS_DIR = f"{EXPLORATION}/results"
CHILDREN_DIR = f"{EXPLORATION}/children"
_JOB_RECORD = re.compile(r"^(\d+)\.json$")


class SweepFolderBusy(RuntimeError):
    """Another live sweeper holds the sweep folder's lock."""


class SweepLock:
    """An exclusive ``flock`` on ``exploration/.lock`` held for the sweeper's life.

    The kernel drops it when the process dies (also on SIGKILL), so a stale lock never blocks a
    resume. The file names the holder (PID and host) for the message a second sweeper prints.
    """

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = Path(sweep_dir) / EXPLORATION / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`SweepFolderBusy` naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.path.read_text(encoding="utf-8", errors="replace").strip() or "unknown process"
            os.close(fd)
            raise SweepFolderBusy(
                f"{self.path.parent.parent} is in use by another sweeper ({holder}); wait for it to "
                "finish or stop it, or choose another hydra.sweep.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def first_free_job(sweep_dir: str | Path) -> int:
    """One past the highest job number that left any trace: a job folder or a result/child record."""
    root = Path(sweep_dir)
    numbers = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    for sub in (RESULTS_DIR, CHILDREN_DIR):
        folder = root / sub
        if folder.is_dir():
            numbers += [int(m.group(1)) for p in folder.iterdir() if (m := _JOB_RECORD.match(p.name))]
    return max(numbers, default=-1) + 1


def set_aside(path: Path, label: str) -> Path:
    """Rename ``path`` to ``<name>.<label>-<time>`` (never overwriting anything); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def write_child_record(sweep_dir: str | Path, job_num: int, record: dict[str, Any]) -> None:
    """The node metadata of job ``job_num`` (strategy, hypothesis, ...), as inert JSON data."""
    atomic_write_text(Path(sweep_dir) / CHILDREN_DIR / f"{job_num}.json", json.dumps(record, indent=1))


def read_child_record(sweep_dir: str | Path, job_num: int) -> dict[str, Any] | None:
    """What :func:`write_child_record` wrote for ``job_num`` (None when absent or unreadable)."""
    try:
        data = json.loads((Path(sweep_dir) / CHILDREN_DIR / f"{job_num}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

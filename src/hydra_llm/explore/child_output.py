"""A sweep child's output goes to its job folder, not to the sweep's terminal.

Lightning's banners, W&B's lines, library warnings and progress output of a child are written to
``<job folder>/child.log`` (file descriptors 1 and 2 are redirected while the task runs, so output
of subprocesses and C extensions lands there too). The sweeper's terminal keeps one line per node
and one per batch. :func:`console_stderr` is where a message for the person at the terminal goes
while a child in this process holds the redirect.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

LOG_NAME = "child.log"
_console_fd: int | None = None


def console_stderr() -> int:
    """The file descriptor of the terminal's stderr, also while a child's output is redirected."""
    return _console_fd if _console_fd is not None else 2


@contextlib.contextmanager
def to_job_log(folder: str | Path) -> Iterator[Path]:
    """Redirect fds 1 and 2 (and Python's streams) to ``folder/child.log`` for the ``with`` body."""
    global _console_fd
    path = Path(folder) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    previous_console = _console_fd
    _console_fd = previous_console if previous_console is not None else saved[1]
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield path
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log_fd, *saved):
            os.close(fd)
        _console_fd = previous_console

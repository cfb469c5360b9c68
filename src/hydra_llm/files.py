"""Atomic file writes: readers (other sweep children, a resumed sweeper) see the old content or the
new one, never a half-written file. And the disk around them: room reserved up front for files
written through a memory map, a full disk told from other errors (:func:`is_out_of_space`), a folder
that cannot be written told before anything is (:func:`unwritable`), sizes for messages.

Every write goes to a temporary file with a unique name in the target's folder, which then replaces
the target (``os.replace``, atomic on POSIX). Two processes writing the same target never share a
temporary file; the last rename wins.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra_llm.printable import error_line


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` through ``write(temporary_path)``, then rename it into place.

    A writer that fails on a full disk without saying so (``torch.save``: "unexpected pos 576 vs
    534") raises ``OSError`` (ENOSPC) naming the folder, with its own error in the message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except Exception as err:
        full = not isinstance(err, OSError) and _nearly_full(path.parent)  # measured with the tmp file
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(
                errno.ENOSPC,
                f"{path.parent}: no space left on device while writing {path.name} ({error_line(err, 300)})",
            ) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nearly_full(folder: Path) -> bool:
    """Whether the disk of ``folder`` has less than 1 MB free (False where that cannot be read)."""
    try:
        return shutil.disk_usage(folder).free < 1_000_000
    except OSError:
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically (data caches, checkpoints)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left on device, disk quota exceeded


def is_out_of_space(error: BaseException | str | None) -> bool:
    """Whether ``error`` (an exception, or a sweep child's error line ``Type: message``) says a disk
    is full."""
    if isinstance(error, OSError):
        return error.errno in NO_SPACE_ERRNOS
    return isinstance(error, str) and any(f"[Errno {code}]" in error for code in NO_SPACE_ERRNOS)


def unwritable(folder: str | Path) -> str | None:
    """Why ``folder`` could not be created and written, or None; nothing is created. The nearest part
    of the path that exists must be a folder this process may write in."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(probe).f_flag & os.ST_RDONLY
        return f"{probe} is not writable" + (" (a read-only file system)" if read_only else "")
    return None


def disk_size(n_bytes: float) -> str:
    """``n_bytes`` for a message: GB with one decimal from 1 GB, whole MB below."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def reserve_disk(path: str | Path) -> None:
    """Give the whole of the existing file ``path`` its disk blocks now (``posix_fallocate``).

    A file made at its full size for a memory map (``numpy.lib.format.open_memmap``) is sparse: a full
    disk shows only when a write through the map reaches a page with no block behind it, and the
    kernel then kills the process (SIGBUS) without a Python error. Reserved here, a full disk raises
    ``OSError`` (ENOSPC) before anything is written. Where the call is missing (not POSIX) nothing is
    reserved."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)

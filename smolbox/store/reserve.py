"""A few MiB of disk kept aside so that smolbox still works on a full disk.

Why: SQLite in WAL mode creates and grows its ``-wal`` and ``-shm`` files on every
open, so on a full disk the first statement fails (``SQLITE_IOERR_SHMSIZE``,
``SQLITE_FULL``) — and with it ``smolbox list``, ``info`` and ``rm``, the very
commands a user runs to free space. The store keeps a preallocated file of
``RESERVE_BYTES`` next to the database; a process that finds the disk (nearly)
full — only when a store operation actually fails with a full disk — deletes it,
retries the operation once, and at once puts back what is still free (so the next
process finds a reserve again, and a guest writing at the same moment can take at
most the little the retry left out). A new or roomy home gets a full reserve.
Used by ``store/db.py`` and ``store/store.py`` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

RESERVE_NAME = ".disk-reserve"
RESERVE_BYTES = 8 << 20
MARGIN_BYTES = 256 << 10  # kept free for the borrowing process when it gives back

log = logging.getLogger("smolbox.store")


def _free(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def ensure(directory: Path, *, headroom: int = 3 * RESERVE_BYTES) -> None:
    """Create the reserve when ``headroom`` bytes would stay free beside it (a new or
    roomy home); never fails."""
    if _free(directory) >= RESERVE_BYTES + headroom:
        _make(directory / RESERVE_NAME, RESERVE_BYTES)


def give_back(directory: Path) -> None:
    """After a borrowing operation: put back as much of the reserve as is free, keeping
    ``MARGIN_BYTES`` for this process (a smaller reserve is released whole next time)."""
    size = min(RESERVE_BYTES, _free(directory) - MARGIN_BYTES)
    if size >= MARGIN_BYTES:
        _make(directory / RESERVE_NAME, size)


def _make(path: Path, size: int) -> None:
    if path.exists():
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file
        except OSError:
            os.close(fd)
            path.unlink()
            return
        os.close(fd)


def release(directory: Path) -> bool:
    """Delete the reserve; True if there was one to give back."""
    try:
        (directory / RESERVE_NAME).unlink()
    except OSError:
        return False
    log.warning("the disk holding %s is full: borrowed smolbox's disk reserve so that "
                "list/info/rm keep working; free space on it", directory)
    return True

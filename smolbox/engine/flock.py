"""Non-blocking exclusive file locks, the way host processes share a machine's
resources (agent ports, the transfer disk): the kernel releases a lock when its
holder exits, so a crashed process never leaves one behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_exclusive(path: Path, *, create: bool = False) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None if someone holds it.

    Closing the fd releases the lock. Raises ``FileNotFoundError`` when ``path`` is
    missing and ``create`` is false.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

"""Blocking exclusive file locks between host processes (and threads) that share
host-wide state: uid claims, RAM keepers.

Why ``flock`` on a file of its own: the kernel releases it when the holder dies, so a
kill -9 never leaves a lock behind; and each caller opens the file itself, so two
threads of one process exclude each other too (a lock belongs to an open file).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600 if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Session-wide test set-up: an isolated smolbox home, the default image, one engine.

Why isolated: tests must never see or touch the user's real machines, and several
test runs (or a developer's CLI) may share this host. Only the heavy build cache
(SMOLBOX_CACHE: kernel, base rootfs) is shared, so a fresh clone reuses them.
The run directory lives under /tmp with a short name because unix socket paths
are limited to 107 bytes.

The fixtures live in :mod:`tests.leakguard`: at the end of the session nothing the
session owns may remain (machines, QEMU and other processes, store rows, temp dirs
and sockets, TAPs, nft tables, namespaces); a leak fails the run, then is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.store import Store
from tests.leakguard import default_image, engine, smolbox_env

__all__ = ["default_image", "engine", "smolbox_env", "store"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store of its own (unit tests of the store and its users)."""
    opened = Store.open(tmp_path / "state" / "smolbox.db")
    try:
        yield opened
    finally:
        opened.close()

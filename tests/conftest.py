"""Session-wide test set-up: an isolated smolbox home, the default image, one engine.

Why isolated: tests must never see or touch the user's real machines, and several
test runs (or a developer's CLI) may share this host. Only the heavy build cache
(SMOLBOX_CACHE: kernel, base rootfs) is shared, so a fresh clone reuses them.
The run directory lives under /tmp with a short name because unix socket paths
are limited to 107 bytes.

At the end of the session no QEMU process may remain under the session's run
directory: a leak fails the run (and is killed so it does not outlive it).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.store import Store


@pytest.fixture(scope="session", autouse=True)
def smolbox_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("smolbox-home")
    run_root = Path(tempfile.mkdtemp(prefix="sbx-"))  # short: unix socket paths
    saved = {k: os.environ.get(k) for k in ("SMOLBOX_HOME", "SMOLBOX_RUN", "SMOLBOX_IMAGES")}
    os.environ["SMOLBOX_HOME"] = str(home)
    os.environ["SMOLBOX_RUN"] = str(run_root)
    os.environ["SMOLBOX_IMAGES"] = str(home / "images")
    yield home
    from smolbox.engine.reconcile import qemu_processes_under

    leaked = qemu_processes_under(run_root)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(run_root, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert not leaked, f"QEMU processes leaked by the test session: {leaked}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store of its own (unit tests of the store and its users)."""
    opened = Store.open(tmp_path / "state" / "smolbox.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="session")
def default_image(smolbox_env: Path):  # type: ignore[no-untyped-def]
    """The default guest image, built once per machine (cached) and installed here."""
    from smolbox.images.testing import ensure_default_image
    from smolbox.paths import Paths

    return ensure_default_image(Paths.from_env())


@pytest.fixture(scope="session")
def engine(default_image: object) -> Iterator[object]:
    """One embedded engine for the whole session (machines are shared via fixtures)."""
    from smolbox.engine.engine import Engine

    eng = Engine()
    yield eng
    for record in eng.list_machines():
        eng.delete(record.id, force=True)
    eng.close()

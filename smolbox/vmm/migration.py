"""Saving and loading a VM's device state (and RAM) with QEMU migration.

QEMU 7.2 has no ``file:`` migration URI, and a jailed QEMU may neither spawn
helpers (``exec:`` URIs) nor open host files, so the host opens the state file and
hands QEMU the descriptor (QMP ``getfd``; ``fd:NAME`` URIs).
With the ``x-ignore-shared`` capability, RAM that lives in a shared file
(``memory-backend-file,share=on``) is left out of the stream: the RAM file itself
is the snapshot, and the state stream shrinks to a few KiB. Loading with the same
capability expects the RAM to be provided by the destination's memory backend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from smolbox import errors
from smolbox.vmm.qmp import QMPSession

POLL_SECONDS = 0.005
OUT_FD = "smolbox-migrate-out"
IN_FD = "smolbox-migrate-in"


def _capabilities(qmp: QMPSession, ignore_shared: bool) -> None:
    qmp.command("migrate-set-capabilities", capabilities=[
        {"capability": "x-ignore-shared", "state": ignore_shared},
    ])


def _wait(qmp: QMPSession, operation: str, timeout: float, finished: Callable[[], bool]
          ) -> None:
    """Poll ``finished`` until it says so; cancel the migration when time runs out."""
    deadline = time.monotonic() + timeout
    while not finished():
        if time.monotonic() > deadline:
            qmp.command("migrate_cancel")
            raise errors.OperationTimeoutError(operation, timeout)
        time.sleep(POLL_SECONDS)


def save_state(qmp: QMPSession, dest: Path, *, ignore_shared: bool,
               timeout: float = 120.0) -> None:
    """Write the VM's state to ``dest``; the VM ends in ``postmigrate`` (paused)."""
    _capabilities(qmp, ignore_shared)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        qmp.send_fd(fd, OUT_FD)
        qmp.command("migrate", uri=f"fd:{OUT_FD}")
    finally:
        os.close(fd)  # QEMU holds its own copy until the migration ends

    def completed() -> bool:
        info = qmp.command("query-migrate")
        if info.get("status") in ("failed", "cancelled"):
            raise errors.VMMError(
                f"Saving the machine state failed: {info.get('error-desc', info['status'])}",
                details={"migration": info},
            )
        return bool(info.get("status") == "completed")

    _wait(qmp, "save machine state", timeout, completed)


def load_state(qmp: QMPSession, src: Path, *, ignore_shared: bool,
               timeout: float = 120.0) -> None:
    """Load state into a QEMU started with ``-incoming defer``; it ends paused."""
    _capabilities(qmp, ignore_shared)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise errors.SnapshotCorruptError(f"Cannot read the machine state {src.name}: "
                                          f"{err.strerror}") from None
    try:
        qmp.send_fd(fd, IN_FD)
        qmp.command("migrate-incoming", uri=f"fd:{IN_FD}")
    finally:
        os.close(fd)
    _wait(qmp, "load machine state", timeout, lambda: qmp.status() != "inmigrate")
    status = qmp.status()
    info = qmp.command("query-migrate")
    if info.get("status") not in (None, "completed") or status not in ("paused", "running"):
        raise errors.VMMError(
            f"Loading the machine state failed (QEMU state {status})",
            details={"migration": info},
        )

"""Saving and loading a VM's device state (and RAM) with QEMU migration.

QEMU 7.2 has no ``file:`` migration URI, so state goes through ``exec:cat``.
With the ``x-ignore-shared`` capability, RAM that lives in a shared file
(``memory-backend-file,share=on``) is left out of the stream: the RAM file itself
is the snapshot, and the state stream shrinks to a few KiB. Loading with the same
capability expects the RAM to be provided by the destination's memory backend.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from smolbox import errors
from smolbox.vmm.qmp import QMPSession

POLL_SECONDS = 0.005


def _capabilities(qmp: QMPSession, ignore_shared: bool) -> None:
    qmp.command("migrate-set-capabilities", capabilities=[
        {"capability": "x-ignore-shared", "state": ignore_shared},
    ])


def save_state(qmp: QMPSession, dest: Path, *, ignore_shared: bool,
               timeout: float = 120.0) -> None:
    """Write the VM's state to ``dest``; the VM ends in ``postmigrate`` (paused)."""
    _capabilities(qmp, ignore_shared)
    qmp.command("migrate", uri=f"exec:cat > {shlex.quote(str(dest))}")
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.command("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise errors.VMMError(
                f"Saving the machine state failed: {info.get('error-desc', status)}",
                details={"migration": info},
            )
        if time.monotonic() > deadline:
            qmp.command("migrate_cancel")
            raise errors.OperationTimeoutError("save machine state", timeout)
        time.sleep(POLL_SECONDS)


def load_state(qmp: QMPSession, src: Path, *, ignore_shared: bool,
               timeout: float = 120.0) -> None:
    """Load state into a QEMU started with ``-incoming defer``; it ends paused."""
    _capabilities(qmp, ignore_shared)
    qmp.command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(src))}")
    deadline = time.monotonic() + timeout
    while True:
        status = qmp.status()
        if status not in ("inmigrate",):
            break
        if time.monotonic() > deadline:
            raise errors.OperationTimeoutError("load machine state", timeout)
        time.sleep(POLL_SECONDS)
    info = qmp.command("query-migrate")
    if info.get("status") not in (None, "completed") or status not in ("paused", "running"):
        raise errors.VMMError(
            f"Loading the machine state failed (QEMU state {status})",
            details={"migration": info},
        )

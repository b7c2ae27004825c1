"""The guest console: a bounded ring inside QEMU, drained into a bounded file on the host.

Untrusted code can write to the console as fast as it likes, so QEMU keeps it in a
1 MiB ring (never a growing file). The engine drains that ring whenever it looks
(logs, stop, a failed boot) and appends to ``console.log``, trimming the file to its
last ``LOG_LIMIT`` bytes, so `smolbox logs` still works after the machine stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

from smolbox import errors
from smolbox.vmm.qmp import QMPSession
from smolbox.vmm.spec import CONSOLE_CHARDEV, CONSOLE_RING_BYTES

LOG_LIMIT = 2 * CONSOLE_RING_BYTES


def drain(qmp_socket: Path, log_path: Path) -> str:
    """Move whatever the ring holds into the log file; return the new text."""
    try:
        with QMPSession(qmp_socket, timeout=2.0) as qmp:
            text = qmp.console_read(CONSOLE_CHARDEV, CONSOLE_RING_BYTES)
    except errors.SmolboxError:
        return ""
    if text:
        append_bounded(log_path, text.encode("utf-8", "replace"))
    return text


def append_bounded(log_path: Path, data: bytes, limit: int = LOG_LIMIT) -> None:
    with open(log_path, "ab") as handle:
        handle.write(data)
        size = handle.tell()
    if size > limit:
        with open(log_path, "rb") as handle:
            handle.seek(size - limit)
            tail = handle.read()
        tmp = log_path.with_suffix(".tmp")
        tmp.write_bytes(tail)
        os.replace(tmp, log_path)


def tail(log_path: Path, limit: int = 4000) -> str:
    try:
        data = log_path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")

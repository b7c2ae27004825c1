"""A short-lived, synchronous QMP session built on the qemu.qmp library.

Why short-lived: QEMU's QMP socket serves one client at a time, and the CLI, the
REST server and the SDK may all act on the same machine; each operation connects,
runs its commands and disconnects so nobody holds the monitor. Why a private
event loop: qemu.qmp is asyncio-based, and the engine is called from plain
threads (CLI, SDK) as well as from worker threads of the async server; owning the
loop keeps those worlds apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient
from qemu.qmp.error import QMPError as LibraryQMPError

from smolbox import errors

T = TypeVar("T")


class QMPSession:
    """``with QMPSession(path) as qmp: qmp.command("stop")``."""

    def __init__(self, socket_path: Path, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"smolbox:{socket_path.parent.name}")

    def _run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        return self._loop.run_until_complete(
            asyncio.wait_for(awaitable, timeout if timeout is not None else self.timeout)
        )

    def __enter__(self) -> QMPSession:
        try:
            self._run(self._client.connect(str(self.socket_path)))
        except (TimeoutError, ConnectError, OSError, EOFError) as err:
            self._close_loop()
            raise errors.VMMError(
                f"Cannot reach QEMU's monitor at {self.socket_path}: {err}",
                details={"socket": str(self.socket_path)},
                help="The QEMU process may have exited; `smolbox info NAME` shows its state.",
            ) from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._run(self._client.disconnect(), timeout=2.0)
        except (TimeoutError, LibraryQMPError, OSError, EOFError):
            pass  # the VM may be gone already (e.g. after `quit`)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def command(self, name: str, timeout: float | None = None, **arguments: Any) -> Any:
        """Run one QMP command; QEMU's error class becomes ``QMPError.qmp_class``."""
        try:
            return self._run(self._client.execute(name, arguments or None), timeout)
        except ExecuteError as err:
            raise errors.QMPError(
                f"QMP {name} failed: {err.error_msg if hasattr(err, 'error_msg') else err}",
                qmp_class=getattr(err, "error_class", None), command=name, status_code=None,
            ) from None
        except TimeoutError:
            raise errors.OperationTimeoutError(
                f"QMP {name}", timeout if timeout is not None else self.timeout
            ) from None
        except (LibraryQMPError, OSError, EOFError) as err:
            raise errors.VMMError(
                f"QMP {name} failed: the monitor connection broke ({err})",
                details={"command": name},
            ) from None

    def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU an open file descriptor under ``name`` (SCM_RIGHTS + QMP ``getfd``).

        Why: a sandboxed QEMU (``-sandbox spawn=deny``, a chroot) can neither run
        ``exec:`` helpers nor open host files itself; the host opens the file and
        passes the descriptor, which ``fd:NAME`` URIs then use.
        """
        try:
            self._client.send_fd_scm(fd)
        except (LibraryQMPError, OSError) as err:
            raise errors.VMMError(f"Cannot pass a file descriptor to QEMU: {err}",
                                  details={"fdname": name}) from None
        self.command("getfd", fdname=name)

    def status(self) -> str:
        """QEMU's run state, e.g. ``running``, ``paused``, ``inmigrate``, ``postmigrate``."""
        return str(self.command("query-status")["status"])

    def console_read(self, chardev: str, size: int) -> str:
        """Drain up to ``size`` bytes of the console ring (consumed once read)."""
        return str(self.command("ringbuf-read", device=chardev, size=size, format="utf8"))

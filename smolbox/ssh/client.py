"""A blocking SSH client (asyncssh on a private event loop thread) with the agent's
shapes: ``exec`` -> ExecResult, ``exec_stream`` -> ExecEvent, files through SFTP.

Why pinned: ``known_hosts`` holds exactly the host key smolbox generated for the
machine, so a different key (another guest on the forwarded port, a man in the middle)
fails with SSH_FAILED instead of being trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from smolbox.channel.types import ExecEvent, ExecResult
from smolbox.errors import OperationTimeoutError, SSHError

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SSHTarget:
    """Where a machine's sshd listens and how to log in."""

    vm_id: str
    host: str
    port: int
    user: str
    client_key: Path
    host_public: str


class SSHClient:
    """One SSH connection to a machine; ``close()`` it (or use ``with``)."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"ssh-{target.vm_id}")
        self._thread.start()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._session: asyncssh.SSHClientProcess[bytes] | None = None

    # ------------------------------------------------------------------ plumbing
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise OperationTimeoutError("ssh", timeout) from None
        except (asyncssh.Error, OSError) as err:
            raise self._error(err) from None

    def _error(self, err: BaseException) -> SSHError:
        reason = str(err) or type(err).__name__
        if isinstance(err, asyncssh.HostKeyNotVerifiable):
            reason = f"the host key does not match the pinned key ({reason})"
        return SSHError(self.target.vm_id, reason, host=self.target.host,
                        port=self.target.port)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            known = asyncssh.import_known_hosts(
                f"[{self.target.host}]:{self.target.port} {self.target.host_public}\n"
                if self.target.port != 22 else
                f"{self.target.host} {self.target.host_public}\n")
            self._conn = await asyncssh.connect(
                self.target.host, self.target.port, username=self.target.user,
                client_keys=[str(self.target.client_key)], known_hosts=known,
                agent_path=None, config=[], connect_timeout=CONNECT_TIMEOUT)
        return self._conn

    # ------------------------------------------------------------------- public
    def connect(self) -> None:
        self._call(self._connect(), CONNECT_TIMEOUT + 5)

    def wait_ready(self, timeout: float) -> None:
        """Retry connecting until sshd answers with the pinned key (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect()
                return
            except SSHError as err:  # refused / reset while sshd starts; a key is final
                if "host key" in str(err.details.get("reason")) or time.monotonic() > deadline:
                    raise
            except OperationTimeoutError:  # slirp accepts at once; the banner comes later
                if time.monotonic() > deadline:
                    raise
            time.sleep(1.0)

    def exec(self, cmd: list[str] | str, *, timeout: float | None = None) -> ExecResult:
        started = time.monotonic()
        out: list[bytes] = []
        err: list[bytes] = []
        exit_code: int | None = None
        signal: int | None = None
        for event in self.exec_stream(cmd, timeout=timeout):
            if event.kind == "stdout":
                out.append(event.data)
            elif event.kind == "stderr":
                err.append(event.data)
            else:
                exit_code, signal = event.exit_code, event.signal
        return ExecResult(exit_code=exit_code, signal=signal, stdout_bytes=b"".join(out),
                          stderr_bytes=b"".join(err), duration=time.monotonic() - started,
                          command=[cmd] if isinstance(cmd, str) else list(cmd))

    def exec_stream(self, cmd: list[str] | str, *,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Output chunks as they arrive, then the exit event; a str runs via the login
        shell, a list is quoted word by word."""
        import shlex

        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        events: queue.Queue[ExecEvent | BaseException] = queue.Queue()

        async def pump(reader: asyncssh.SSHReader[bytes], kind: str) -> None:
            while chunk := await reader.read(65536):
                events.put(ExecEvent("stdout" if kind == "stdout" else "stderr", chunk))

        async def run() -> None:
            try:
                conn = await self._connect()
                process = await conn.create_process(line, encoding=None)
                await asyncio.gather(pump(process.stdout, "stdout"),
                                     pump(process.stderr, "stderr"))
                await process.wait_closed()
                code = process.exit_status
                sig = process.exit_signal
                events.put(ExecEvent("exit", exit_code=code if sig is None else None,
                                     signal=_signal_number(sig[0]) if sig else None))
            except (asyncssh.Error, OSError) as err:
                events.put(self._error(err))
            except BaseException as err:
                events.put(err)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = events.get(timeout=wait)
                except queue.Empty:
                    raise OperationTimeoutError("exec", timeout) from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.kind == "exit":
                    return
        finally:
            future.cancel()

    def interactive(self, command: str | None = None, *, stdin_fd: int = 0,
                    stdout_fd: int = 1) -> int:
        """A terminal session (the login shell, or ``command``) on a guest pty, relayed
        to this process's terminal in raw mode (window size changes follow); returns
        the exit code (128+N for signal N)."""
        import os
        import signal as signals
        import termios
        import tty

        on_tty = os.isatty(stdin_fd)
        size = os.get_terminal_size(stdin_fd) if on_tty else os.terminal_size((80, 24))

        async def run() -> int:
            conn = await self._connect()
            process = await conn.create_process(
                command, term_type=os.environ.get("TERM", "xterm"),
                term_size=(size.columns, size.lines), encoding=None)
            self._session = process

            def typed() -> None:
                data = os.read(stdin_fd, 4096)
                if data:
                    process.stdin.write(data)
                else:
                    self._loop.remove_reader(stdin_fd)
                    process.stdin.write_eof()

            self._loop.add_reader(stdin_fd, typed)
            try:
                while chunk := await process.stdout.read(65536):
                    os.write(stdout_fd, chunk)
                await process.wait_closed()
            finally:
                self._loop.remove_reader(stdin_fd)
            if process.exit_signal:
                return 128 + (_signal_number(process.exit_signal[0]) or 0)
            return process.exit_status or 0

        def resized(_signum: int, _frame: object) -> None:
            new = os.get_terminal_size(stdin_fd)
            session = self._session
            if session is not None:
                self._loop.call_soon_threadsafe(session.change_terminal_size,
                                                new.columns, new.lines)

        saved = termios.tcgetattr(stdin_fd) if on_tty else None
        previous = signals.signal(signals.SIGWINCH, resized) if on_tty else None
        try:
            if on_tty:
                tty.setraw(stdin_fd)
            return self._call(run())
        finally:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            if previous is not None:
                signals.signal(signals.SIGWINCH, previous)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        async def put() -> None:
            conn = await self._connect()
            async with conn.start_sftp_client() as sftp:
                tmp = f"{path}.smolbox-tmp"
                async with sftp.open(tmp, "wb") as handle:
                    await handle.write(data)
                await sftp.chmod(tmp, mode)
                await sftp.posix_rename(tmp, path)
        self._call(put())

    def read_file(self, path: str) -> bytes:
        async def get() -> bytes:
            conn = await self._connect()
            async with conn.start_sftp_client() as sftp, sftp.open(path, "rb") as handle:
                data = await handle.read()
                return data if isinstance(data, bytes) else data.encode()
        return self._call(get())

    def close(self) -> None:
        async def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                await self._conn.wait_closed()
                self._conn = None
        if self._loop.is_running():
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SSHClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_number(name: str) -> int | None:
    import signal as signals

    try:
        return int(signals.Signals[f"SIG{name}"])
    except KeyError:
        return None

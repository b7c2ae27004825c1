"""AgentClient: the engine's handle on one guest agent (exec, files, identity).

Why a synchronous, thread-safe client: the engine, SDK and server call it from
worker threads; one reader thread (in :mod:`smolbox.channel.connection`) routes
frames, so any number of threads can run operations at once on one client.

Everything here validates its inputs before sending anything, and turns every
guest-side failure into a catalogue error: guest file errors become
``GuestFileError``/``GuestFileNotFoundError``, broken frames
``GuestProtocolError``, a dropped connection ``CommandExecutionUnavailableError``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import re
import signal as signals
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from smolbox import hostfiles
from smolbox.channel.connection import (
    Connection,
    HandshakeRetry,
    HandshakeTimeout,
    Msg,
    Stream,
    StreamKind,
)
from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.errors import (
    CommandExecutionUnavailableError,
    GuestAgentError,
    GuestFileError,
    GuestFileNotFoundError,
    GuestProtocolError,
    OperationTimeoutError,
    TransferCorruptError,
    ValidationError,
)
from smolbox.guest import protocol as p

EXEC_GRACE = 1.0  # the guest enforces exec timeouts; the host waits this much longer
READ_WINDOW = 8 << 20  # bytes of a file read the guest may send ahead of the consumer
DEFAULT_OP_TIMEOUT = 60.0  # for metadata ops and for each step of a transfer
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Command = list[str] | str
_Event = tuple[str, bytes, int | None, int | None]  # kind, data, code (or pid), signal


# ------------------------------------------------------------------------- validation


def check_guest_path(path: object, field: str = "path") -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ValidationError(f"Guest {field} must be an absolute path, got {path!r}",
                              field=field, value=str(path))
    return path


def _argv(cmd: Command) -> list[str]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValidationError("The command is empty", field="cmd", value=cmd)
        return ["/bin/sh", "-c", cmd]
    if (not isinstance(cmd, list | tuple) or not cmd
            or not all(isinstance(a, str) and "\0" not in a for a in cmd)):
        raise ValidationError("The command must be a string or a non-empty list of strings",
                              field="cmd", value=repr(cmd))
    return list(cmd)


def _exec_request(argv: list[str], env: dict[str, str] | None, cwd: str | None,
                  user: str | int | None, timeout: float | None, *, stdin: bool,
                  background: bool) -> dict[str, Any]:
    if env is not None:
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValidationError(f"Invalid environment variable name {key!r}",
                                      field="env", value=str(key))
            if not isinstance(value, str) or "\0" in value:
                raise ValidationError(f"Environment variable {key} must be a string without NUL",
                                      field="env", value=str(key))
    if cwd is not None:
        check_guest_path(cwd, "cwd")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValidationError("timeout must be a positive number of seconds",
                              field="timeout", value=timeout)
    return {"op": "exec", "argv": argv, "env": env or {}, "cwd": cwd,
            "user": None if user is None else str(user), "timeout": timeout,
            "stdin": stdin, "background": background}


def _file_stat(obj: Any) -> FileStat:
    try:
        kind = obj["type"]
        if kind not in ("file", "dir", "symlink", "other"):
            raise TypeError(kind)
        fields = {"path": str, "name": str, "size": int, "mode": int, "uid": int, "gid": int}
        for key, typ in fields.items():
            if not isinstance(obj[key], typ) or isinstance(obj[key], bool):
                raise TypeError(key)
        mtime = obj["mtime"]
        if not isinstance(mtime, int | float) or isinstance(mtime, bool):
            raise TypeError("mtime")
        target = obj.get("target")
        return FileStat(path=obj["path"], name=obj["name"], type=kind, size=obj["size"],
                        mode=obj["mode"], mtime=float(mtime), uid=obj["uid"], gid=obj["gid"],
                        target=target if isinstance(target, str) else None)
    except (KeyError, TypeError) as exc:
        raise GuestProtocolError(f"The guest sent a malformed file entry ({exc})") from None


# ------------------------------------------------------------------------ process handle


class ProcessHandle:
    """A process started with :meth:`AgentClient.spawn` (or reached with ``attach``).

    Spawned processes are background processes in the guest: they keep running
    when this client disconnects, and ``attach(pid)`` from a new client picks up
    their output (the last 1 MiB per stream is kept while nobody listens).
    """

    def __init__(self, client: AgentClient, stream: Stream, pid: int, command: list[str],
                 started: float, timeout: float | None) -> None:
        self._client = client
        self._stream = stream
        self.pid = pid
        self.command = command
        self._started = started
        self._timeout = timeout
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._result: ExecResult | None = None
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._result is not None

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Block until the process exits; OperationTimeoutError leaves it running."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._result is None:
                msg = self._stream.get(deadline, "wait", timeout)
                self._absorb(msg)
            return self._result

    def events(self) -> Iterator[ExecEvent]:
        """Output as it arrives, ending with the exit event."""
        with self._lock:
            for chunk in self._out:
                yield ExecEvent("stdout", chunk)
            for chunk in self._err:
                yield ExecEvent("stderr", chunk)
            while self._result is None:
                msg = self._stream.get(None, "wait", None)
                self._absorb(msg)
                if msg.type == p.STDOUT:
                    yield ExecEvent("stdout", msg.payload)
                elif msg.type == p.STDERR:
                    yield ExecEvent("stderr", msg.payload)
            yield ExecEvent("exit", exit_code=self._result.exit_code,
                            signal=self._result.signal)

    def _absorb(self, msg: Msg) -> None:
        if msg.type == p.STDOUT:
            self._out.append(msg.payload)
        elif msg.type == p.STDERR:
            self._err.append(msg.payload)
        elif msg.type == p.ERROR:
            assert msg.obj is not None
            raise self._client._guest_error(msg.obj, "spawn")
        elif msg.type == p.EXIT:
            assert msg.obj is not None
            self._result = ExecResult(
                exit_code=msg.obj.get("code"), signal=msg.obj.get("signal"),
                stdout_bytes=b"".join(self._out), stderr_bytes=b"".join(self._err),
                duration=time.monotonic() - self._started, command=self.command, pid=self.pid)
            if msg.obj.get("timed_out"):
                raise OperationTimeoutError("exec", self._timeout or 0.0)

    def kill(self, sig: int = signals.SIGKILL) -> None:
        """Send ``sig`` to the process group (a no-op once it has exited)."""
        if self._result is None and not self._stream.done:
            self._stream.send_json(p.SIGNAL, {"signal": int(sig)})

    def send_stdin(self, data: bytes) -> None:
        """Write to the process's stdin (blocks while the guest's buffer is full)."""
        self._client._send_stdin(self._stream, data, None)

    def close_stdin(self) -> None:
        if not self._stream.done:
            self._stream.send(p.STDIN, b"", p.FLAG_EOF)

    def next_event(self, timeout: float) -> ExecEvent | None:
        """The next output or exit event, or None if none came within ``timeout``.

        For callers that interleave keepalives or cancellation checks (the E2B front
        door); output is handed over, not kept for :meth:`wait`.
        """
        with self._lock:
            if self._result is None:
                try:
                    msg = self._stream.get(time.monotonic() + timeout, "wait", timeout)
                except OperationTimeoutError:
                    return None
                if msg.type in (p.STDOUT, p.STDERR):
                    return ExecEvent("stdout" if msg.type == p.STDOUT else "stderr",
                                     msg.payload)
                self._absorb(msg)
                if self._result is None:
                    return None
            return ExecEvent("exit", exit_code=self._result.exit_code,
                             signal=self._result.signal)

    def detach(self) -> None:
        """Stop listening without stopping the process (it keeps running in the guest;
        ``attach(pid)`` reaches it again). Unlike an abandoned exec, nothing is killed."""
        if not self._stream.done:
            self._stream.conn.abandon(self._stream)


# ------------------------------------------------------------------------------ client


class AgentClient:
    """A connection to one guest's agent. Thread-safe; close it (or use ``with``)."""

    def __init__(self, conn: Connection, *, socket_path: Path, vm_id: str,
                 op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self._conn = conn
        self.socket_path = socket_path
        self.vm_id = vm_id
        self.op_timeout = op_timeout
        self._closed = False

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def connect(cls, socket_path: Path, *, vm_id: str, timeout: float) -> AgentClient:
        """Connect and handshake, retrying until ``timeout`` (the guest may be booting).

        A socket that never accepts gives CommandExecutionUnavailableError; one
        that accepts but never answers gives OperationTimeoutError("agent handshake").
        """
        socket_path = Path(socket_path)
        deadline = time.monotonic() + timeout
        accepted = False
        reason = "the agent socket was never tried"
        garbage = 0  # bytes the last silent attempt received that were no handshake
        delay = 0.005
        while True:
            try:
                conn = Connection.handshake(socket_path, vm_id, deadline)
                return cls(conn, socket_path=socket_path, vm_id=vm_id)
            except HandshakeRetry as exc:
                accepted = True
                garbage = max(garbage, exc.received)
                reason = "the agent closed or did not answer the handshake"
            except HandshakeTimeout as exc:
                accepted = True
                garbage = max(garbage, exc.received)
                reason = "the agent did not answer the handshake"
            except TimeoutError:
                accepted = True
                reason = "the agent did not answer the handshake"
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                reason = f"agent socket {socket_path} is not accepting connections ({exc.strerror})"
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                    accepted = True
                    reason = "the agent reset the connection during the handshake"
                elif exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    reason = f"agent socket {socket_path}: {exc.strerror}"
                else:
                    raise CommandExecutionUnavailableError(
                        vm_id, f"cannot connect to agent socket {socket_path}: {exc}",
                        "Check that the machine is running (`smolbox info NAME`).") from None
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        if garbage:
            raise GuestProtocolError(
                f"The guest answered the handshake with {garbage} bytes that are not a "
                "smolbox agent handshake", vm_id=vm_id, details={"received_bytes": garbage})
        if accepted:
            raise OperationTimeoutError("agent handshake", timeout,
                                        details={"vm_id": vm_id, "reason": reason})
        raise CommandExecutionUnavailableError(
            vm_id, reason, "Start the machine (`smolbox start NAME`) and check "
            "`smolbox logs NAME` if it does not become ready.")

    def close(self) -> None:
        """Close the connection (idempotent); pending operations get a typed error."""
        if not self._closed:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return not self._closed and not self._conn.failed

    @property
    def keepalive_hold(self) -> Callable[[], bool] | None:
        """While this returns True (the machine is paused on purpose) a silent agent
        is not declared dead by the keepalive."""
        return self._conn.keepalive_hold

    @keepalive_hold.setter
    def keepalive_hold(self, hold: Callable[[], bool] | None) -> None:
        self._conn.keepalive_hold = hold

    @property
    def guest_info(self) -> dict[str, Any]:
        """What the agent said in the handshake (version, capabilities, background pids)."""
        return dict(self._conn.hello)

    def supports(self, capability: str) -> bool:
        """Whether the guest's agent announced ``capability`` (older images lack new ones)."""
        return capability in (self._conn.hello.get("caps") or ())

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """One request/reply operation by name, for ops without a dedicated method."""
        return self._simple({"op": op, **args}, timeout)

    # -------------------------------------------------------------------- helpers
    def _open(self, kind: StreamKind) -> Stream:
        return self._conn.open(kind)

    def _guest_error(self, obj: dict[str, Any], operation: str) -> GuestAgentError:
        message = str(obj.get("message"))[:500]
        err = obj.get("errno")
        path = obj.get("path")
        kind = obj.get("kind")
        if kind == "protocol":
            return GuestProtocolError(f"{operation}: the guest rejected a frame: {message}",
                                      vm_id=self.vm_id)
        if kind == "integrity":
            return TransferCorruptError(str(path), None, operation, self.vm_id,
                                        details={"guest_message": message})
        if err == errno.ENOENT:
            return GuestFileNotFoundError(f"{operation}: {path or ''}: {message}",
                                          path=path, errno=err, vm_id=self.vm_id)
        if err is not None or kind in ("os", "cwd"):
            return GuestFileError(f"{operation}: {path or ''}: {message}", path=path,
                                  errno=err, vm_id=self.vm_id)
        return GuestAgentError(f"{operation} failed in the guest: {message}", vm_id=self.vm_id,
                               details={"kind": str(kind)})

    def _simple(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        operation = str(request["op"])
        timeout = timeout or self.op_timeout
        stream = self._open("simple")
        try:
            stream.send_json(p.REQUEST, request)
            msg = stream.get(time.monotonic() + timeout, operation, timeout)
        except BaseException:
            stream.abandon()
            raise
        assert msg.obj is not None
        if msg.type == p.ERROR:
            raise self._guest_error(msg.obj, operation)
        return msg.obj

    def _send_stdin(self, stream: Stream, data: bytes, deadline: float | None) -> bool:
        """Send stdin within the guest's credit; False if the process already ended."""
        view = memoryview(data)
        for start in range(0, len(view), p.DATA_CHUNK):
            chunk = view[start:start + p.DATA_CHUNK]
            try:
                if not stream.credit.take(len(chunk), deadline):
                    return False
            except TimeoutError:
                return False
            stream.send(p.STDIN, bytes(chunk))
        return True

    def _start_exec(self, cmd: Command, env: dict[str, str] | None, cwd: str | None,
                    user: str | int | None, stdin: bool, timeout: float | None,
                    background: bool) -> tuple[Stream, list[str]]:
        argv = _argv(cmd)
        request = _exec_request(argv, env, cwd, user, timeout, stdin=stdin,
                                background=background)
        stream = self._open("exec")
        try:
            stream.send_json(p.REQUEST, request)
        except BaseException:
            stream.abandon()
            raise
        return stream, argv

    # ----------------------------------------------------------------------- exec
    def exec(self, cmd: Command, *, env: dict[str, str] | None = None, cwd: str | None = None,
             user: str | int | None = None, stdin: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command to completion; a str runs via ``/bin/sh -c``.

        On timeout the guest kills the command's whole process group and this
        raises OperationTimeoutError("exec", timeout); the machine stays usable.
        """
        started = time.monotonic()
        out: list[bytes] = []
        err: list[bytes] = []
        pid = 0
        for event, payload, code, sig in self._exec_events(cmd, env, cwd, user, stdin, timeout,
                                                           started):
            if event == "stdout":
                out.append(payload)
            elif event == "stderr":
                err.append(payload)
            elif event == "pid":
                pid = code or 0
            else:
                return ExecResult(exit_code=code, signal=sig, stdout_bytes=b"".join(out),
                                  stderr_bytes=b"".join(err),
                                  duration=time.monotonic() - started,
                                  command=_argv(cmd), pid=pid)
        raise GuestProtocolError("exec ended without an exit status", vm_id=self.vm_id)

    def exec_stream(self, cmd: Command, *, env: dict[str, str] | None = None,
                    cwd: str | None = None, user: str | int | None = None,
                    stdin: bytes | None = None,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Run a command and yield its output as it arrives, then the exit event.

        Stopping the iteration early kills the command.
        """
        started = time.monotonic()
        for event, payload, code, sig in self._exec_events(cmd, env, cwd, user, stdin, timeout,
                                                           started):
            if event in ("stdout", "stderr"):
                yield ExecEvent("stdout" if event == "stdout" else "stderr", payload)
            elif event == "exit":
                yield ExecEvent("exit", exit_code=code, signal=sig)
                return

    def _exec_events(self, cmd: Command, env: dict[str, str] | None, cwd: str | None,
                     user: str | int | None, stdin: bytes | None, timeout: float | None,
                     started: float) -> Iterator[_Event]:
        if stdin is not None and not isinstance(stdin, bytes | bytearray | memoryview):
            raise ValidationError("stdin must be bytes", field="stdin", value=type(stdin).__name__)
        stream, _argv_list = self._start_exec(cmd, env, cwd, user, stdin is not None, timeout,
                                              background=False)
        deadline = None if timeout is None else started + timeout + EXEC_GRACE
        finished = False
        try:
            if stdin is not None and self._send_stdin(stream, bytes(stdin), deadline):
                with contextlib.suppress(GuestAgentError):
                    stream.send(p.STDIN, b"", p.FLAG_EOF)
            while True:
                msg = stream.get(deadline, "exec", timeout)
                if msg.type == p.STDOUT:
                    yield "stdout", msg.payload, None, None
                elif msg.type == p.STDERR:
                    yield "stderr", msg.payload, None, None
                elif msg.type == p.REPLY:
                    assert msg.obj is not None
                    pid = msg.obj.get("pid")
                    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
                        raise GuestProtocolError("exec reply without a valid pid",
                                                 vm_id=self.vm_id)
                    yield "pid", b"", pid, None
                elif msg.type == p.ERROR:
                    finished = True
                    assert msg.obj is not None
                    raise self._guest_error(msg.obj, "exec")
                elif msg.type == p.EXIT:
                    finished = True
                    assert msg.obj is not None
                    if msg.obj.get("timed_out"):
                        raise OperationTimeoutError("exec", timeout or 0.0,
                                                    details={"vm_id": self.vm_id})
                    yield "exit", b"", msg.obj.get("code"), msg.obj.get("signal")
                    return
        finally:
            if not finished:
                stream.abandon()

    # ---------------------------------------------------------------- processes
    def spawn(self, cmd: Command, *, env: dict[str, str] | None = None, cwd: str | None = None,
              user: str | int | None = None, stdin: bytes | None = None,
              timeout: float | None = None) -> ProcessHandle:
        """Start a background process and return at once (it survives reconnects)."""
        started = time.monotonic()
        stream, argv = self._start_exec(cmd, env, cwd, user, True, timeout, background=True)
        try:
            pid = self._await_pid(stream, "spawn")
            handle = ProcessHandle(self, stream, pid, argv, started, timeout)
            if stdin is not None:
                handle.send_stdin(bytes(stdin))
                handle.close_stdin()
            return handle
        except BaseException:
            stream.abandon()
            raise

    def attach(self, pid: int) -> ProcessHandle:
        """Reach a background process started by an earlier connection."""
        if not isinstance(pid, int) or pid <= 0:
            raise ValidationError("pid must be a positive integer", field="pid", value=pid)
        stream = self._open("exec")
        try:
            stream.send_json(p.REQUEST, {"op": "attach", "pid": pid})
            self._await_pid(stream, "attach")
        except BaseException:
            stream.abandon()
            raise
        return ProcessHandle(self, stream, pid, [], time.monotonic(), None)

    def background_pids(self) -> list[int]:
        """Background processes the agent knew of when this client connected."""
        pids = self._conn.hello.get("background")
        return [x for x in pids if isinstance(x, int)] if isinstance(pids, list) else []

    def _await_pid(self, stream: Stream, operation: str) -> int:
        deadline = time.monotonic() + self.op_timeout
        msg = stream.get(deadline, operation, self.op_timeout)
        if msg.type == p.ERROR:
            assert msg.obj is not None
            raise self._guest_error(msg.obj, operation)
        if msg.type != p.REPLY or msg.obj is None:
            raise GuestProtocolError(f"{operation}: expected the process id first",
                                     vm_id=self.vm_id)
        pid = msg.obj.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise GuestProtocolError(f"{operation}: invalid pid", vm_id=self.vm_id)
        return pid

    # -------------------------------------------------------------------- files
    def write_file(self, path: str, data: bytes | BinaryIO, *, mode: int = 0o644) -> None:
        """Write a guest file atomically (temp file + rename), streamed in chunks."""
        check_guest_path(path)
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ValidationError("mode must be an integer between 0 and 0o7777",
                                  field="mode", value=mode)
        source: BinaryIO = (io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray)
                            else data)
        with_crc = self.supports("crc32")
        crc = 0
        stream = self._open("write")
        try:
            stream.send_json(p.REQUEST, {"op": "write_file", "path": path, "mode": mode})
            while not stream.done:
                try:
                    chunk = source.read(p.DATA_CHUNK)
                except OSError as exc:
                    raise GuestFileError(f"write_file: reading the source failed: {exc}",
                                         path=path, errno=exc.errno, vm_id=self.vm_id) from None
                if not chunk:
                    if with_crc:  # the guest renames the file into place only on a match
                        stream.send(p.DATA, p.CRC.pack(crc), p.FLAG_EOF | p.FLAG_CRC)
                    else:
                        stream.send(p.DATA, b"", p.FLAG_EOF)
                    break
                if with_crc:
                    crc = zlib.crc32(chunk, crc)
                try:
                    if not stream.credit.take(len(chunk), time.monotonic() + self.op_timeout):
                        break  # the guest ended the stream (an error is queued)
                except TimeoutError:
                    raise OperationTimeoutError("write_file", self.op_timeout) from None
                stream.send(p.DATA, chunk)
            msg = stream.get(time.monotonic() + self.op_timeout, "write_file", self.op_timeout)
        except BaseException:
            stream.abandon()
            raise
        if msg.type == p.ERROR:
            assert msg.obj is not None
            raise self._guest_error(msg.obj, "write_file")

    def read_file_stream(self, path: str) -> Iterator[bytes]:
        """A guest file's content in chunks; the guest never runs far ahead of you."""
        check_guest_path(path)
        with_crc = self.supports("crc32")
        stream = self._open("read")
        try:
            stream.send_json(p.REQUEST, {"op": "read_file", "path": path,
                                         "window": READ_WINDOW, "crc": with_crc})
        except BaseException:
            stream.abandon()
            raise
        return self._read_chunks(stream, path, with_crc)

    def _read_chunks(self, stream: Stream, path: str, with_crc: bool) -> Iterator[bytes]:
        """The file's chunks; with ``with_crc`` the last frame carries the guest's
        CRC-32 of the whole file, and a mismatch raises after the last chunk (callers
        that keep the bytes, like ``download``, then discard them)."""
        consumed = 0
        crc = 0
        size = 0
        try:
            while True:
                msg = stream.get(time.monotonic() + self.op_timeout, "read_file",
                                 self.op_timeout)
                if msg.type == p.ERROR:
                    assert msg.obj is not None
                    raise self._guest_error(msg.obj, "read_file")
                if msg.eof and with_crc:
                    self._check_read_crc(msg, crc, size, path)
                    return
                if msg.payload:
                    if with_crc:
                        crc = zlib.crc32(msg.payload, crc)
                    size += len(msg.payload)
                    yield msg.payload
                    consumed += len(msg.payload)
                if msg.eof:
                    return
                if consumed >= READ_WINDOW // 4:
                    stream.send(p.CREDIT_FRAME, p.CREDIT.pack(consumed))
                    consumed = 0
        finally:
            if not stream.done:
                stream.abandon()

    def _check_read_crc(self, msg: Msg, crc: int, size: int, path: str) -> None:
        if not msg.flags & p.FLAG_CRC or len(msg.payload) != p.CRC.size:
            raise GuestProtocolError("read_file: the guest's last frame carries no checksum",
                                     vm_id=self.vm_id)
        if p.CRC.unpack(msg.payload)[0] != crc:
            raise TransferCorruptError(path, size, "stream", self.vm_id)

    def read_file(self, path: str) -> bytes:
        return b"".join(self.read_file_stream(path))

    def upload(self, host_path: str | Path, guest_path: str, *, mode: int | None = None) -> None:
        """Copy a host file into the guest, streamed; the mode defaults to the host file's."""
        check_guest_path(guest_path)
        with hostfiles.open_source(host_path, mode) as (handle, chosen):
            self.write_file(guest_path, handle, mode=chosen)

    def download(self, guest_path: str, host_path: str | Path) -> None:
        """Copy a guest file to the host, streamed; the host file appears atomically."""
        check_guest_path(guest_path)
        hostfiles.write_atomically(self.read_file_stream(guest_path), host_path)

    def mkdir(self, path: str, parents: bool = True, mode: int = 0o755) -> None:
        self._simple({"op": "mkdir", "path": check_guest_path(path), "parents": parents,
                      "mode": mode})

    def list_dir(self, path: str) -> list[FileStat]:
        obj = self._simple({"op": "list", "path": check_guest_path(path)})
        entries = obj.get("entries")
        if not isinstance(entries, list):
            raise GuestProtocolError("list: the guest sent no entries", vm_id=self.vm_id)
        return [_file_stat(entry) for entry in entries]

    def stat(self, path: str) -> FileStat:
        return _file_stat(self._simple({"op": "stat", "path": check_guest_path(path)}))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except GuestFileNotFoundError:
            return False
        return True

    def remove(self, path: str, recursive: bool = False) -> None:
        self._simple({"op": "remove", "path": check_guest_path(path), "recursive": recursive})

    # --------------------------------------------------------- machine settings
    def ping(self) -> float:
        """Round trip time of a no-op request, in seconds."""
        started = time.perf_counter()
        self._simple({"op": "ping"})
        return time.perf_counter() - started

    def set_env(self, env: dict[str, str]) -> None:
        """Default environment for later execs (per-exec env still wins)."""
        _exec_request(["true"], env, None, None, None, stdin=False, background=False)
        self._simple({"op": "set_env", "env": dict(env)})

    def set_identity(self, hostname: str, machine_id: str, entropy: bytes, time_ns: int) -> None:
        """Make a snapshot clone unique: hostname, machine-id, RNG reseed, wall clock."""
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", hostname):
            raise ValidationError(f"Invalid hostname {hostname!r}", field="hostname",
                                  value=hostname)
        if not re.match(r"^[0-9a-f]{32}$", machine_id):
            raise ValidationError("machine_id must be 32 lowercase hex digits",
                                  field="machine_id", value=machine_id)
        self._simple({"op": "set_identity", "hostname": hostname, "machine_id": machine_id,
                      "entropy": base64.b64encode(entropy).decode(), "time_ns": int(time_ns)})

    def sync_time(self) -> None:
        """Set the guest's wall clock from the host's (clones resume with a stale clock)."""
        self._simple({"op": "set_time", "time_ns": time.time_ns()})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the guest to sync and power off, then close this client."""
        try:
            self._simple({"op": "shutdown"}, timeout=timeout)
        except CommandExecutionUnavailableError:
            pass  # the guest went down before its answer arrived: that is success
        finally:
            self.close()


"""The in-guest agent: runs commands and moves files for the host.

Why this shape:
- One reader thread parses frames and hands them to per-stream handlers; every
  long operation (a process, a file transfer) runs in its own thread, so a slow
  process never stalls the others and the reader stays responsive to signals.
- All writes to the host go through one lock per transport, one whole frame at
  a time, so frames from different threads never interleave.
- A virtio-serial port outlives host connections (the CLI connects once per
  command).  A session ends when reads hit EOF or a new HELLO arrives; its
  foreground processes are killed, background ones keep running and buffer
  their output until a later session attaches to them by pid.
- Host -> guest bulk data (file writes, stdin) is credit-controlled so a fast
  host cannot make the guest buffer unbounded data; guest -> host file reads are
  credit-controlled the same way for the host's sake.

Stdlib only: this file is copied into the guest rootfs.  On the host, tests run
``python -m smolbox.guest.agent --socket PATH --root DIR``, which serves a unix
socket and keeps identity changes (hostname, clock) inside DIR.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import errno
import fcntl
import glob
import json
import os
import pwd
import queue
import secrets
import selectors
import shutil
import signal
import socket
import stat as statmod
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from smolbox.guest import protocol as p

NOTE_READY = b"R"
NOTE_POWER_OFF = b"P"
READ_SIZE = 1 << 20  # bytes asked for per read of the transport
OUTPUT_CHUNK = p.DATA_CHUNK
BACKGROUND_BUFFER = 1 << 20  # output kept per detached background process
DRAIN_IDLE = 0.1  # after exit, stop reading pipes idle this long (daemonised children)
DRAIN_MAX = 5.0  # ...or after this long at most
RNDADDENTROPY = 0x40085203
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class OpError(Exception):
    """A request failed in a way the host should see as an ERROR frame."""

    def __init__(self, message: str, *, err: int | None = None, path: str | None = None,
                 kind: str = "error") -> None:
        super().__init__(message)
        self.errno = err
        self.path = path
        self.kind = kind

    @classmethod
    def from_os(cls, exc: OSError, path: str | None = None) -> OpError:
        return cls(exc.strerror or str(exc), err=exc.errno,
                   path=path or (str(exc.filename) if exc.filename else None), kind="os")

    def payload(self) -> dict[str, Any]:
        return {"message": str(self), "errno": self.errno, "path": self.path, "kind": self.kind}


# ----------------------------------------------------------------------------- transports


class Transport:
    """A byte pipe to the host; ``write`` sends whole frames under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def read(self) -> bytes:
        raise NotImplementedError

    def write_all(self, data: bytes) -> None:
        raise NotImplementedError


class FdTransport(Transport):
    """The virtio-serial port (or any fd): opened once, lives across host connections."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def read(self) -> bytes:
        return os.read(self.fd, READ_SIZE)

    def write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class SocketTransport(Transport):
    """One accepted unix-socket connection (the host-side test mode)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def read(self) -> bytes:
        return self.sock.recv(READ_SIZE)

    def write_all(self, data: bytes) -> None:
        self.sock.sendall(data)


# -------------------------------------------------------------------------------- session


class Session:
    """One host connection: the streams it opened and the way back to it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.alive = True
        self.handlers: dict[int, Handler] = {}
        self.handlers_lock = threading.Lock()

    def send(self, frame: bytes) -> bool:
        """Write one frame; False once the session is over (the frame is dropped)."""
        with self.transport.lock:
            if not self.alive:
                return False
            try:
                self.transport.write_all(frame)
            except OSError:
                self.alive = False
                return False
        return True

    def send_json(self, ftype: int, stream: int, obj: dict[str, Any]) -> bool:
        return self.send(p.pack_json(ftype, stream, obj))

    def error(self, stream: int, exc: OpError) -> None:
        self.forget(stream)
        self.send_json(p.ERROR, stream, exc.payload())

    def register(self, stream: int, handler: Handler) -> None:
        with self.handlers_lock:
            self.handlers[stream] = handler

    def forget(self, stream: int) -> None:
        with self.handlers_lock:
            self.handlers.pop(stream, None)

    def handler(self, stream: int) -> Handler | None:
        with self.handlers_lock:
            return self.handlers.get(stream)

    def close(self) -> None:
        """End the session: no more writes; handlers abort or detach."""
        self.alive = False
        with self.handlers_lock:
            handlers = list(self.handlers.values())
            self.handlers.clear()
        for handler in handlers:
            handler.session_closed()


class Handler:
    """Receives the host's frames for one stream."""

    def on_frame(self, frame: p.Frame) -> None:
        """Data/control frames from the host for this stream (default: ignore)."""

    def session_closed(self) -> None:
        """The host went away (or cancelled the stream)."""


# ------------------------------------------------------------------------------ credit


class Credit:
    """Bytes a sender may still send; the sender blocks until granted more."""

    def __init__(self, initial: int) -> None:
        self.available = initial
        self.cond = threading.Condition()
        self.aborted = False

    def grant(self, amount: int) -> None:
        with self.cond:
            self.available += amount
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def take(self, amount: int) -> bool:
        """Wait until ``amount`` may be sent; False if the transfer was aborted."""
        with self.cond:
            while self.available < amount and not self.aborted:
                self.cond.wait()
            if self.aborted:
                return False
            self.available -= amount
            return True


class Inbox:
    """Host -> guest data queue; hands credit back as the consumer drains it."""

    def __init__(self, session: Session, stream: int) -> None:
        self.session = session
        self.stream = stream
        self.queue: queue.SimpleQueue[p.Frame | None] = queue.SimpleQueue()
        self.consumed = 0

    def put(self, frame: p.Frame | None) -> None:
        self.queue.put(frame)

    def get(self) -> p.Frame | None:
        return self.queue.get()

    def consumed_bytes(self, amount: int) -> None:
        self.consumed += amount
        if self.consumed >= p.WRITE_WINDOW // 4:
            self.session.send(p.pack(p.CREDIT_FRAME, self.stream, p.CREDIT.pack(self.consumed)))
            self.consumed = 0


# -------------------------------------------------------------------------------- process


def _resolve_user(user: str | int | None) -> pwd.struct_passwd | None:
    if user is None or user == "":
        return None
    try:
        if isinstance(user, int) or str(user).isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(str(user))
    except KeyError:
        raise OpError(f"no such user: {user}", kind="user") from None


class Proc(Handler):
    """A process started by exec or spawn; survives host reconnects if background."""

    def __init__(self, agent: Agent, session: Session, stream: int, req: dict[str, Any]) -> None:
        self.agent = agent
        self.session: Session | None = session
        self.stream = stream
        self.req = req
        self.background = bool(req.get("background"))
        self.lock = threading.Lock()
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.exit: dict[str, Any] | None = None
        self.buffer: collections.deque[tuple[int, bytes]] = collections.deque()
        self.buffered = 0
        self.stdin: Inbox | None = Inbox(session, stream) if req.get("stdin") else None
        self.killed = False
        self.deadline = None if req.get("timeout") is None else (
            time.monotonic() + float(req["timeout"]))

    # host -> guest
    def on_frame(self, frame: p.Frame) -> None:
        if frame.type == p.STDIN and self.stdin is not None:
            self.stdin.put(frame)
        elif frame.type == p.SIGNAL:
            self.signal(int(frame.json().get("signal", signal.SIGKILL)))
        elif frame.type == p.CANCEL:
            self.signal(signal.SIGKILL)

    def session_closed(self) -> None:
        with self.lock:
            self.session = None
        if not self.background:
            if self.stdin is not None:
                self.stdin.put(None)
            self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if not self.pid or self.exit is not None:
            self.killed = self.killed or signum == signal.SIGKILL
            return
        try:
            os.killpg(self.pid, signum)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signum)

    # guest -> host
    def emit(self, ftype: int, payload: bytes, final: bool = False) -> None:
        with self.lock:
            session = self.session
            if session is not None and session.alive:
                if final:
                    session.forget(self.stream)
                    self.agent.processes.pop(self.pid, None)
                session.send(p.pack(ftype, self.stream, payload))
                return
            if not self.background:
                return
            if final:
                return  # exit status stays in self.exit for a later attach
            self.buffer.append((ftype, payload))
            self.buffered += len(payload)
            while self.buffered > BACKGROUND_BUFFER and self.buffer:
                self.buffered -= len(self.buffer.popleft()[1])

    def attach(self, session: Session, stream: int) -> None:
        """Bind to a new host stream: replay buffered output, then the exit if known."""
        with self.lock:
            self.session = session
            self.stream = stream
            if self.stdin is not None:
                self.stdin.session = session
                self.stdin.stream = stream
            session.register(stream, self)
            session.send_json(p.REPLY, stream, {"pid": self.pid, "attached": True})
            while self.buffer:
                ftype, payload = self.buffer.popleft()
                session.send(p.pack(ftype, stream, payload))
            self.buffered = 0
            done = self.exit
        if done is not None:
            self.emit(p.EXIT, _json_bytes(done), final=True)

    # the thread
    def start(self) -> None:
        threading.Thread(target=self._run, name=f"exec-{self.stream}", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        req = self.req
        argv = req.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise OpError("argv must be a non-empty list of strings", kind="request")
        who = _resolve_user(req.get("user"))
        env = self.agent.base_env(who)
        env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        cwd = req.get("cwd") or (who.pw_dir if who else self.agent.default_cwd)
        if not os.path.isdir(cwd):
            cwd = cwd if req.get("cwd") else "/"
        kwargs: dict[str, Any] = {}
        if who is not None and who.pw_uid != os.geteuid():
            kwargs.update(user=who.pw_uid, group=who.pw_gid,
                          extra_groups=os.getgrouplist(who.pw_name, who.pw_gid))
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                start_new_session=True, close_fds=True, bufsize=0, **kwargs)
        except FileNotFoundError as exc:
            if exc.filename == cwd or not os.path.isdir(cwd):
                raise OpError(f"working directory not found: {cwd}", err=errno.ENOENT,
                              path=cwd, kind="cwd") from None
            raise _NotExecutable(127, f"{argv[0]}: command not found\n") from None
        except PermissionError as exc:
            if exc.filename == cwd:
                raise OpError.from_os(exc, cwd) from None
            raise _NotExecutable(126, f"{argv[0]}: permission denied\n") from None
        except OSError as exc:
            raise _NotExecutable(126, f"{argv[0]}: {exc.strerror}\n") from None

    def _run(self) -> None:
        try:
            popen = self._spawn()
        except _NotExecutable as exc:
            self._finish_without_process(exc)
            return
        except OpError as exc:
            with self.lock:
                session = self.session
            if session is not None:
                session.error(self.stream, exc)
            return
        except Exception as exc:
            with self.lock:
                session = self.session
            if session is not None:
                session.error(self.stream, OpError(f"exec failed: {exc!r}"))
            return
        self.popen = popen
        self.pid = popen.pid
        with self.lock:
            session = self.session
        if self.background:
            self.agent.processes[self.pid] = self
        if session is not None:
            session.send_json(p.REPLY, self.stream, {"pid": self.pid})
        if self.killed:
            self.signal(signal.SIGKILL)
        if self.stdin is not None:
            threading.Thread(target=self._feed_stdin, name=f"stdin-{self.stream}",
                             daemon=True).start()
        timed_out = self._pump_output(popen)
        code = popen.wait()
        result = {"code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                  "timed_out": timed_out, "pid": self.pid}
        with self.lock:
            self.exit = result
        self.emit(p.EXIT, _json_bytes(result), final=True)

    def _finish_without_process(self, exc: _NotExecutable) -> None:
        result = {"code": exc.code, "signal": None, "timed_out": False, "pid": 0}
        with self.lock:
            session = self.session
        if session is not None:
            session.send_json(p.REPLY, self.stream, {"pid": 0})
        self.exit = result
        self.emit(p.STDERR, exc.message.encode())
        self.emit(p.EXIT, _json_bytes(result), final=True)

    def _pump_output(self, popen: subprocess.Popen[bytes]) -> bool:
        """Forward stdout/stderr until both close; enforce the timeout. True if it fired."""
        assert popen.stdout is not None and popen.stderr is not None
        sel = selectors.DefaultSelector()
        kinds = {popen.stdout.fileno(): p.STDOUT, popen.stderr.fileno(): p.STDERR}
        for fd in kinds:
            sel.register(fd, selectors.EVENT_READ)
        timed_out = False
        exited_at: float | None = None
        try:
            while kinds:
                now = time.monotonic()
                wait = 0.25 if exited_at is None else DRAIN_IDLE
                if self.deadline is not None and not timed_out:
                    wait = max(0.0, min(wait, self.deadline - now))
                events = sel.select(wait)
                if not events:
                    now = time.monotonic()
                    if self.deadline is not None and not timed_out and now >= self.deadline:
                        timed_out = True
                        self.signal(signal.SIGKILL)
                        continue
                    if exited_at is not None:
                        break  # the process is gone, a daemonised child holds the pipe
                    if popen.poll() is not None:
                        exited_at = now
                    continue
                if exited_at is not None and time.monotonic() - exited_at > DRAIN_MAX:
                    break
                for key, _ in events:
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, OUTPUT_CHUNK)
                    except OSError:
                        data = b""
                    if data:
                        self.emit(kinds[fd], data)
                    else:
                        sel.unregister(fd)
                        del kinds[fd]
        finally:
            sel.close()
            popen.stdout.close()
            popen.stderr.close()
        return timed_out

    def _feed_stdin(self) -> None:
        assert self.popen is not None and self.popen.stdin is not None and self.stdin
        pipe = self.popen.stdin
        broken = False
        while True:
            frame = self.stdin.get()
            if frame is None:
                break
            if frame.payload and not broken:
                try:
                    pipe.write(frame.payload)
                except OSError:
                    broken = True  # the process stopped reading; drop the rest
            self.stdin.consumed_bytes(len(frame.payload))
            if frame.eof:
                break
        with contextlib.suppress(OSError):
            pipe.close()


class _NotExecutable(Exception):
    """The command could not be executed; reported like a shell would (126/127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------- files


def _abs(req: dict[str, Any], key: str = "path") -> str:
    path = req.get(key)
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise OpError(f"{key} must be an absolute path", kind="request", path=str(path))
    return path


class FileWriter(Handler):
    """Receives a file in chunks into a temp file, renamed over the target at the end."""

    def __init__(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        self.session = session
        self.stream = stream
        self.path = _abs(req)
        self.mode = int(req.get("mode", 0o644)) & 0o7777
        self.inbox = Inbox(session, stream)
        directory, name = os.path.split(self.path)
        if not name:
            raise OpError("path names a directory", err=errno.EISDIR, path=self.path)
        self.tmp = os.path.join(directory, f".{name}.smolbox-{secrets.token_hex(4)}.tmp")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise OpError.from_os(exc, self.path) from None

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"write-{self.stream}", daemon=True).start()

    def on_frame(self, frame: p.Frame) -> None:
        if frame.type == p.DATA:
            self.inbox.put(frame)
        elif frame.type == p.CANCEL:
            self.inbox.put(None)

    def session_closed(self) -> None:
        self.inbox.put(None)

    def _run(self) -> None:
        size = 0
        try:
            while True:
                frame = self.inbox.get()
                if frame is None:
                    raise OpError("transfer cancelled", kind="cancelled")
                view = memoryview(frame.payload)
                while view:
                    view = view[os.write(self.fd, view):]
                size += len(frame.payload)
                self.inbox.consumed_bytes(len(frame.payload))
                if frame.eof:
                    break
            os.fchmod(self.fd, self.mode)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
        except (OSError, OpError) as exc:
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            err = exc if isinstance(exc, OpError) else OpError.from_os(exc, self.path)
            self.session.error(self.stream, err)
            return
        self.session.forget(self.stream)
        self.session.send_json(p.REPLY, self.stream, {"size": size})


class FileReader(Handler):
    """Sends a file in big chunks, as fast as the host's credit allows."""

    def __init__(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        self.session = session
        self.stream = stream
        self.path = _abs(req)
        self.credit = Credit(int(req.get("window", p.WRITE_WINDOW)))
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OpError.from_os(exc, self.path) from None
        if statmod.S_ISDIR(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise OpError("is a directory", err=errno.EISDIR, path=self.path)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"read-{self.stream}", daemon=True).start()

    def on_frame(self, frame: p.Frame) -> None:
        if frame.type == p.CREDIT_FRAME and len(frame.payload) == p.CREDIT.size:
            self.credit.grant(p.CREDIT.unpack(frame.payload)[0])
        elif frame.type == p.CANCEL:
            self.credit.abort()

    def session_closed(self) -> None:
        self.credit.abort()

    def _run(self) -> None:
        try:
            while True:
                data = os.read(self.fd, p.DATA_CHUNK)
                if not data:
                    break
                if not self.credit.take(len(data)):
                    return
                if not self.session.send(p.pack(p.DATA, self.stream, data)):
                    return
            self.session.forget(self.stream)
            self.session.send(p.pack(p.DATA, self.stream, b"", p.FLAG_EOF))
        except OSError as exc:
            self.session.error(self.stream, OpError.from_os(exc, self.path))
        finally:
            os.close(self.fd)


def _stat_dict(path: str, st: os.stat_result, name: str | None = None) -> dict[str, Any]:
    mode = st.st_mode
    kind = ("dir" if statmod.S_ISDIR(mode) else "file" if statmod.S_ISREG(mode)
            else "symlink" if statmod.S_ISLNK(mode) else "other")
    result: dict[str, Any] = {
        "path": path, "name": name if name is not None else os.path.basename(path) or "/",
        "type": kind, "size": st.st_size, "mode": statmod.S_IMODE(mode),
        "mtime": st.st_mtime, "uid": st.st_uid, "gid": st.st_gid,
    }
    if kind == "symlink":
        with contextlib.suppress(OSError):
            result["target"] = os.readlink(path)
    return result


def op_stat(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    try:
        return _stat_dict(path, os.lstat(path))
    except OSError as exc:
        raise OpError.from_os(exc, path) from None


def op_list(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    entries = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    entries.append(_stat_dict(entry.path, entry.stat(follow_symlinks=False),
                                              entry.name))
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    entries.sort(key=lambda e: e["name"])
    return {"entries": entries}


def op_mkdir(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    mode = int(req.get("mode", 0o755))
    try:
        if req.get("parents", True):
            os.makedirs(path, mode=mode, exist_ok=True)
        else:
            os.mkdir(path, mode)
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    return {}


def op_remove(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    if path == "/":
        raise OpError("refusing to remove /", err=errno.EPERM, path=path)
    try:
        st = os.lstat(path)
        if statmod.S_ISDIR(st.st_mode):
            if req.get("recursive"):
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    return {}


# ------------------------------------------------------------------------------- the agent


class Agent:
    """State that outlives sessions: env defaults, background processes, identity."""

    def __init__(self, *, system: bool, root: str = "/",
                 on_power_off: Callable[[], None] | None = None) -> None:
        self.system = system  # True inside the guest: identity ops change the machine
        self.root = root  # where hostname/machine-id files live (a temp dir in host tests)
        self.on_power_off = on_power_off
        self.env_defaults: dict[str, str] = {}
        self.processes: dict[int, Proc] = {}
        self.default_cwd = "/root" if os.path.isdir("/root") and os.geteuid() == 0 else "/"
        self.clock_offset_ns = 0
        self.stop = False

    def base_env(self, who: pwd.struct_passwd | None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": "C.UTF-8"}
        if who is None:
            with contextlib.suppress(KeyError):
                who = pwd.getpwuid(os.geteuid())
        if who is not None:
            env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.update(self.env_defaults)
        return env

    # -- serving
    def serve(self, transport: Transport, *, persistent: bool) -> None:
        """Serve frames from ``transport`` until it ends (or forever for the port)."""
        decoder = p.FrameDecoder()
        session: Session | None = None
        while not self.stop:
            try:
                data = transport.read()
            except OSError:
                data = b""
            if not data:
                if session is not None:
                    session.close()
                    session = None
                decoder.clear()
                if not persistent:
                    return
                time.sleep(0.02)  # no host connected: the port reads EOF until one is
                continue
            decoder.feed(data)
            session = self._drain(decoder, transport, session)
            if session is None and not persistent and decoder.buffered > p.MAX_FRAME:
                return

    def _drain(self, decoder: p.FrameDecoder, transport: Transport,
               session: Session | None) -> Session | None:
        while True:
            if session is None:
                frame = decoder.resync_hello()
                if frame is None:
                    return None
                session = self._hello(transport, frame)
                continue
            try:
                frame = decoder.next_frame()
            except p.ProtocolViolation as exc:
                session.send_json(p.ERROR, 0, {"message": f"guest: {exc}", "kind": "protocol"})
                session.close()
                return None
            if frame is None:
                return session
            if frame.type == p.HELLO:
                session.close()
                session = self._hello(transport, frame)
                continue
            try:
                self._dispatch(session, frame)
            except p.ProtocolViolation as exc:
                session.send_json(p.ERROR, frame.stream, {"message": str(exc),
                                                          "kind": "protocol"})

    def _hello(self, transport: Transport, frame: p.Frame) -> Session | None:
        session = Session(transport)
        try:
            hello = frame.json()
        except p.ProtocolViolation:
            return None
        reply = {"version": p.VERSION, "nonce": hello.get("nonce"), "caps": list(p.CAPABILITIES),
                 "window": p.WRITE_WINDOW, "max_frame": p.MAX_FRAME, "pid": os.getpid(),
                 "background": sorted(self.processes)}
        if frame.version != p.VERSION or hello.get("version") != p.VERSION:
            reply["error"] = f"unsupported protocol version {hello.get('version')}"
            session.send_json(p.HELLO, 0, reply)
            return None
        session.send_json(p.HELLO, 0, reply)
        return session

    def _dispatch(self, session: Session, frame: p.Frame) -> None:
        if frame.type == p.REQUEST:
            req = frame.json()
            self._request(session, frame.stream, req)
            return
        handler = session.handler(frame.stream)
        if handler is not None:
            handler.on_frame(frame)
        # frames for finished streams are late arrivals: dropped

    def _request(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        op = req.get("op")
        try:
            if op == "ping":
                session.send_json(p.REPLY, stream, {"t": time.time_ns()})
            elif op == "exec":
                proc = Proc(self, session, stream, req)
                session.register(stream, proc)
                proc.start()
            elif op == "attach":
                target = self.processes.get(int(req.get("pid", 0)))
                if target is None:
                    raise OpError(f"no background process {req.get('pid')}", err=errno.ESRCH,
                                  kind="process")
                target.attach(session, stream)
            elif op == "write_file":
                writer = FileWriter(session, stream, req)
                session.register(stream, writer)
                writer.start()
            elif op == "read_file":
                reader = FileReader(session, stream, req)
                session.register(stream, reader)
                reader.start()
            elif op in SIMPLE_OPS:
                threading.Thread(target=self._simple, args=(session, stream, op, req),
                                 daemon=True).start()
            elif op == "set_env":
                self.env_defaults.update({str(k): str(v) for k, v in
                                          (req.get("env") or {}).items()})
                for key in req.get("unset") or []:
                    self.env_defaults.pop(str(key), None)
                session.send_json(p.REPLY, stream, {})
            elif op in ("set_identity", "set_time"):
                self.set_identity(req)
                session.send_json(p.REPLY, stream, {})
            elif op == "shutdown":
                session.send_json(p.REPLY, stream, {})
                self.shutdown()
            else:
                raise OpError(f"unknown op {op!r}", kind="request")
        except OpError as exc:
            session.error(stream, exc)
        except (ValueError, TypeError) as exc:
            session.error(stream, OpError(f"bad request: {exc}", kind="request"))

    def _simple(self, session: Session, stream: int, op: str, req: dict[str, Any]) -> None:
        try:
            result = SIMPLE_OPS[op](req)
        except OpError as exc:
            session.error(stream, exc)
            return
        except Exception as exc:
            session.error(stream, OpError(f"{op} failed: {exc!r}"))
            return
        session.send_json(p.REPLY, stream, result)

    # -- identity and power
    def set_identity(self, req: dict[str, Any]) -> None:
        try:
            if req.get("hostname"):
                self._set_hostname(str(req["hostname"]))
            if req.get("machine_id"):
                self._write_atomic(os.path.join(self.root, "etc/machine-id"),
                                   str(req["machine_id"]).strip() + "\n")
            if req.get("entropy"):
                self._add_entropy(base64.b64decode(req["entropy"]))
            if req.get("time_ns"):
                self._set_clock(int(req["time_ns"]))
        except OSError as exc:
            raise OpError.from_os(exc) from None

    def _set_hostname(self, name: str) -> None:
        if len(name) > 64 or not name or "/" in name or "\0" in name:
            raise OpError(f"invalid hostname {name!r}", kind="request")
        if self.system:
            socket.sethostname(name)
        self._write_atomic(os.path.join(self.root, "etc/hostname"), name + "\n")

    def _add_entropy(self, data: bytes) -> None:
        """Credit the host's bytes to the kernel pool so clones stop sharing RNG state."""
        if self.system:
            try:
                fd = os.open("/dev/random", os.O_WRONLY)
                try:
                    info = struct.pack("ii", len(data) * 8, len(data)) + data
                    fcntl.ioctl(fd, RNDADDENTROPY, info)
                    return
                finally:
                    os.close(fd)
            except OSError:
                pass
        with open("/dev/urandom", "wb") as fh:  # mixes in without crediting
            fh.write(data)

    def _set_clock(self, time_ns: int) -> None:
        if self.system:
            time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
        else:
            self.clock_offset_ns = time_ns - time.time_ns()

    @staticmethod
    def _write_atomic(path: str, content: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.smolbox-tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.replace(tmp, path)

    def shutdown(self) -> None:
        os.sync()
        for proc in list(self.processes.values()):
            proc.signal(signal.SIGKILL)
        if self.on_power_off is not None:
            self.on_power_off()
        self.stop = True


SIMPLE_OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "stat": op_stat, "list": op_list, "mkdir": op_mkdir, "remove": op_remove,
}


# ------------------------------------------------------------------------------ entry points


def find_port(name: str = p.PORT_NAME) -> str | None:
    """The /dev/vportNpM whose sysfs name matches (there is no udev to make a symlink)."""
    for entry in sorted(glob.glob("/sys/class/virtio-ports/*/name")):
        try:
            with open(entry, encoding="ascii") as fh:
                if fh.read().strip() == name:
                    return "/dev/" + os.path.basename(os.path.dirname(entry))
        except OSError:
            continue
    return None


def serve_port(notify_fd: int | None = None, name: str = p.PORT_NAME) -> int:
    """Serve the virtio-serial port forever (the guest's mode); returns an exit code."""
    path = None
    for _ in range(600):
        path = find_port(name)
        if path is not None and os.path.exists(path):
            break
        time.sleep(0.05)
    if path is None:
        print(f"smolbox-agent: no virtio port named {name}", file=sys.stderr)
        return 1
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def power_off() -> None:
        if notify_fd is not None:
            os.write(notify_fd, NOTE_POWER_OFF)

    agent = Agent(system=True, on_power_off=power_off)
    if notify_fd is not None:
        os.write(notify_fd, NOTE_READY)
    agent.serve(FdTransport(fd), persistent=True)
    return 0


def serve_socket(path: str, root: str) -> int:
    """Serve a unix socket, one connection at a time (host-side tests)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    agent = Agent(system=False, root=root)
    print("SMOLBOX_READY", flush=True)
    try:
        while not agent.stop:
            conn, _ = listener.accept()
            with conn:
                agent.serve(SocketTransport(conn), persistent=False)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smolbox-agent", description=__doc__)
    parser.add_argument("--socket", help="serve this unix socket instead of the virtio port")
    parser.add_argument("--root", default=None,
                        help="with --socket: directory receiving hostname/machine-id")
    parser.add_argument("--port-name", default=p.PORT_NAME)
    args = parser.parse_args(argv)
    if args.socket:
        root = args.root or os.path.join(os.path.dirname(os.path.abspath(args.socket)), "root")
        return serve_socket(args.socket, root)
    return serve_port(None, args.port_name)


if __name__ == "__main__":
    sys.exit(main())

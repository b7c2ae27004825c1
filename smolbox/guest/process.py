"""Processes the host runs in the guest: spawn, output pump, timeouts, exit status.

Why one pump thread for all processes: under software emulation starting a
thread costs milliseconds, as much as the rest of an ``exec true``.  So a
process is spawned inline by the request reader and handed to a single
long-lived pump thread that multiplexes every process's stdout/stderr pipes
and its pidfd (readable when the process exits) in one selector, enforces
deadlines, and reports the exit once the pipes are drained.

Each process gets its own session (``setsid``) so a timeout or a kill reaches
the whole process group.  Foreground processes die with the host session that
started them; background ones (``spawn``) keep running and buffer their latest
output until a later session attaches to them by pid.

Stdlib only: this file is copied into the guest rootfs.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import pwd
import selectors
import signal
import subprocess
import threading
import time
from typing import IO, Any, Protocol

from smolbox.guest import protocol as p
from smolbox.guest.session import Handler, Inbox, OpError, Session, json_bytes

OUTPUT_CHUNK = 64 * 1024  # a pipe holds 64 KiB: one read empties it
BACKGROUND_BUFFER = 1 << 20  # output kept per detached background process
DRAIN_IDLE = 0.1  # after exit, stop reading pipes idle this long (daemonised children)
DRAIN_MAX = 5.0  # ...or after this long at most
POLL_FALLBACK = 0.05  # exit polling interval where pidfd_open is unavailable


class ProcessHost(Protocol):
    """What a process needs from the agent (kept abstract to avoid an import cycle)."""

    processes: dict[int, Proc]
    default_cwd: str
    pump: Pump

    def base_env(self, who: pwd.struct_passwd | None) -> dict[str, str]: ...


class NotExecutable(Exception):
    """The command could not be executed; reported like a shell would (126/127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_user(user: str | int | None) -> pwd.struct_passwd | None:
    if user is None or user == "":
        return None
    try:
        if isinstance(user, int) or str(user).isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(str(user))
    except KeyError:
        raise OpError(f"no such user: {user}", kind="user") from None


class Proc(Handler):
    """A process started by exec or spawn."""

    def __init__(self, host: ProcessHost, session: Session, stream: int,
                 req: dict[str, Any]) -> None:
        self.host = host
        self.session: Session | None = session
        self.stream = stream
        self.req = req
        self.background = bool(req.get("background"))
        self.lock = threading.Lock()
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.pidfd: int | None = None
        self.pipes: dict[int, tuple[int, IO[bytes]]] = {}  # fd -> (frame type, file)
        self.returncode: int | None = None
        self.exited_at = 0.0
        self.drain_until = 0.0
        self.timed_out = False
        self.exit: dict[str, Any] | None = None
        self.buffer: collections.deque[tuple[int, bytes]] = collections.deque()
        self.buffered = 0
        self.stdin: Inbox | None = Inbox(session, stream) if req.get("stdin") else None
        self.kill_requested = False
        timeout = req.get("timeout")
        self.deadline = None if timeout is None else time.monotonic() + float(timeout)

    # ------------------------------------------------------------ host -> guest
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
        """Signal the process group (the command and everything it started)."""
        if not self.pid:
            self.kill_requested = self.kill_requested or signum == signal.SIGKILL
            return
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signum)

    # ------------------------------------------------------------ guest -> host
    def emit(self, ftype: int, payload: bytes, final: bool = False) -> None:
        with self.lock:
            session = self.session
            if session is not None and session.alive:
                if final:
                    session.forget(self.stream)
                    self.host.processes.pop(self.pid, None)
                session.send_parts(ftype, self.stream, payload)
                return
            if not self.background or final:
                return  # a background exit stays in self.exit for a later attach
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
                session.send_parts(ftype, stream, payload)
            self.buffered = 0
            done = self.exit
        if done is not None:
            self.emit(p.EXIT, json_bytes(done), final=True)

    # ----------------------------------------------------------------- starting
    def start(self) -> None:
        """Spawn now (in the caller's thread) and hand the pipes to the pump."""
        try:
            popen = self._spawn()
        except NotExecutable as exc:
            self._finish_without_process(exc)
            return
        except OpError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # must reach the host, never kill the reader
            self._fail(OpError(f"exec failed: {exc!r}"))
            return
        self.popen = popen
        self.pid = popen.pid
        assert popen.stdout is not None and popen.stderr is not None
        self.pipes = {popen.stdout.fileno(): (p.STDOUT, popen.stdout),
                      popen.stderr.fileno(): (p.STDERR, popen.stderr)}
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None  # old kernel: the pump polls instead
        if self.background:
            self.host.processes[self.pid] = self
        with self.lock:
            session = self.session
        if session is not None:
            session.send_json(p.REPLY, self.stream, {"pid": self.pid})
        if self.kill_requested:
            self.signal(signal.SIGKILL)
        if self.stdin is not None:
            threading.Thread(target=self._feed_stdin, name=f"stdin-{self.pid}",
                             daemon=True).start()
        self.host.pump.add(self)

    def _fail(self, exc: OpError) -> None:
        with self.lock:
            session = self.session
        if session is not None:
            session.error(self.stream, exc)

    def _spawn(self) -> subprocess.Popen[bytes]:
        req = self.req
        argv = req.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise OpError("argv must be a non-empty list of strings", kind="request")
        who = resolve_user(req.get("user"))
        env = self.host.base_env(who)
        env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        cwd = req.get("cwd") or (who.pw_dir if who else self.host.default_cwd)
        if not req.get("cwd") and not os.path.isdir(cwd):
            cwd = "/"
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
            raise NotExecutable(127, f"{argv[0]}: command not found\n") from None
        except PermissionError as exc:
            if exc.filename == cwd:
                raise OpError.from_os(exc, cwd) from None
            raise NotExecutable(126, f"{argv[0]}: permission denied\n") from None
        except OSError as exc:
            raise NotExecutable(126, f"{argv[0]}: {exc.strerror}\n") from None

    def _finish_without_process(self, exc: NotExecutable) -> None:
        with self.lock:
            session = self.session
        if session is not None:
            session.send_json(p.REPLY, self.stream, {"pid": 0})
        self.exit = {"code": exc.code, "signal": None, "timed_out": False, "pid": 0}
        self.emit(p.STDERR, exc.message.encode())
        self.emit(p.EXIT, json_bytes(self.exit), final=True)

    def finish(self) -> None:
        """Called by the pump once the process is reaped and its pipes are closed."""
        code = self.returncode if self.returncode is not None else -signal.SIGKILL
        result = {"code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                  "timed_out": self.timed_out, "pid": self.pid}
        with self.lock:
            self.exit = result
        self.emit(p.EXIT, json_bytes(result), final=True)

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


class Pump:
    """One thread forwarding all processes' output and noticing their exits."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.incoming: collections.deque[Proc] = collections.deque()
        self.procs: set[Proc] = set()
        threading.Thread(target=self._loop, name="pump", daemon=True).start()

    def add(self, proc: Proc) -> None:
        self.incoming.append(proc)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def _loop(self) -> None:
        while True:
            events = self.sel.select(self._next_timeout())
            for key, _ in events:
                if key.data is None:
                    self._take_incoming()
                else:
                    proc, ftype = key.data
                    if ftype == p.EXIT:
                        self._reaped(proc)
                    else:
                        self._output(proc, int(key.fd), ftype)
            self._timers()

    def _take_incoming(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        while self.incoming:
            proc = self.incoming.popleft()
            self.procs.add(proc)
            for fd, (ftype, _file) in proc.pipes.items():
                self.sel.register(fd, selectors.EVENT_READ, (proc, ftype))
            if proc.pidfd is not None:
                self.sel.register(proc.pidfd, selectors.EVENT_READ, (proc, p.EXIT))

    def _output(self, proc: Proc, fd: int, ftype: int) -> None:
        try:
            data = os.read(fd, OUTPUT_CHUNK)
        except OSError:
            data = b""
        if data:
            proc.emit(ftype, data)
            if proc.returncode is not None:
                proc.drain_until = min(time.monotonic() + DRAIN_IDLE, proc.exited_at + DRAIN_MAX)
            return
        self._close_pipe(proc, fd)
        self._maybe_finish(proc)

    def _close_pipe(self, proc: Proc, fd: int) -> None:
        self.sel.unregister(fd)
        _ftype, file = proc.pipes.pop(fd)
        file.close()

    def _reaped(self, proc: Proc) -> None:
        assert proc.pidfd is not None and proc.popen is not None
        self.sel.unregister(proc.pidfd)
        os.close(proc.pidfd)
        proc.pidfd = None
        self._exited(proc, proc.popen.wait())

    def _exited(self, proc: Proc, code: int) -> None:
        proc.returncode = code
        proc.exited_at = time.monotonic()
        proc.drain_until = proc.exited_at + DRAIN_IDLE
        self._maybe_finish(proc)

    def _maybe_finish(self, proc: Proc) -> None:
        if proc.returncode is not None and not proc.pipes:
            self.procs.discard(proc)
            proc.finish()

    def _timers(self) -> None:
        now = time.monotonic()
        for proc in list(self.procs):
            if proc.returncode is None:
                if proc.pidfd is None and proc.popen is not None:
                    code = proc.popen.poll()
                    if code is not None:
                        self._exited(proc, code)
                        continue
                if proc.deadline is not None and not proc.timed_out and now >= proc.deadline:
                    proc.timed_out = True
                    proc.signal(signal.SIGKILL)
            elif proc.pipes and now >= proc.drain_until:
                # the process is gone but a daemonised child still holds the pipe
                for fd in list(proc.pipes):
                    self._close_pipe(proc, fd)
                self._maybe_finish(proc)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        waits: list[float] = []
        for proc in self.procs:
            if proc.returncode is None:
                if proc.pidfd is None:
                    waits.append(POLL_FALLBACK)
                if proc.deadline is not None and not proc.timed_out:
                    waits.append(proc.deadline - now)
            elif proc.pipes:
                waits.append(proc.drain_until - now)
        return max(0.0, min(waits)) if waits else None

"""One connection to a guest agent: handshake, a reader thread, per-stream queues.

Why this design: many threads share one connection (20 concurrent execs on one
machine), so a single reader thread parses frames and routes each to the queue
of the stream it belongs to; callers block only on their own queue.

The guest is hostile.  Every frame is checked here, in one place, before any
caller sees it: type allowed for that stream's kind, control payloads valid
JSON objects, no frames after a stream's final frame, no frames for streams the
host never opened.  Any violation poisons the connection: the socket is closed
and every pending and later operation raises :class:`GuestProtocolError`.  A
lost connection does the same with :class:`CommandExecutionUnavailableError`.
The reader thread never dies silently: even an unexpected exception becomes a
connection failure, so no caller waits forever.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from smolbox.errors import (
    CommandExecutionUnavailableError,
    GuestAgentError,
    GuestProtocolError,
    OperationTimeoutError,
)
from smolbox.guest import protocol as p

StreamKind = Literal["simple", "exec", "write", "read"]

RECV_SIZE = 1 << 20
HANDSHAKE_ATTEMPT = 2.0  # seconds before a silent handshake is retried on a new connection
# Liveness of a connection with operations in flight: the keepalive looks every
# KEEPALIVE_INTERVAL seconds; once the guest has sent nothing for that long it gets a
# ping, and a guest that answers nothing within KEEPALIVE_TIMEOUT more is declared
# gone.  So an operation on a dead or frozen agent fails within 2 x INTERVAL + TIMEOUT
# seconds (25 s by default), whatever its own timeout; an idle connection sends
# nothing (idle clones stay idle).
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 15.0
# Frame types the guest may send on each kind of stream, and which of them end it.
ALLOWED: dict[str, frozenset[int]] = {
    "simple": frozenset({p.REPLY, p.ERROR}),
    "exec": frozenset({p.REPLY, p.STDOUT, p.STDERR, p.EXIT, p.ERROR, p.CREDIT_FRAME}),
    "write": frozenset({p.REPLY, p.ERROR, p.CREDIT_FRAME}),
    "read": frozenset({p.DATA, p.ERROR}),
}
LOST_REMEDIATION = (
    "The machine's agent connection dropped (the VM stopped or crashed?). "
    "Check `smolbox info NAME` and `smolbox logs NAME`; restart the machine if it is gone."
)


class HandshakeRetry(Exception):
    """The peer closed during the handshake: the agent may not be up yet, try again.

    ``received`` counts the bytes that came first and were not a handshake."""

    def __init__(self, received: int = 0) -> None:
        super().__init__(f"handshake to retry ({received} other bytes received)")
        self.received = received


class HandshakeTimeout(TimeoutError):
    """No handshake before the deadline; ``received`` bytes came that were not one."""

    def __init__(self, received: int) -> None:
        super().__init__(f"no handshake ({received} other bytes received)")
        self.received = received


class Msg:
    """A checked frame from the guest; ``obj`` holds the decoded control payload."""

    __slots__ = ("flags", "obj", "payload", "type")

    def __init__(self, ftype: int, flags: int, payload: bytes, obj: dict[str, Any] | None):
        self.type = ftype
        self.flags = flags
        self.payload = payload
        self.obj = obj

    @property
    def eof(self) -> bool:
        return bool(self.flags & p.FLAG_EOF)


class Credit:
    """How many bytes the host may still send on a stream before the guest grants more."""

    def __init__(self, initial: int) -> None:
        self._available = initial
        self._cond = threading.Condition()
        self._closed = False

    def grant(self, amount: int) -> None:
        with self._cond:
            self._available += amount
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, amount: int, deadline: float | None) -> bool:
        """Block until ``amount`` bytes may be sent. False: the stream ended meanwhile."""
        with self._cond:
            while self._available < amount and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._cond.wait(remaining)
            if self._closed:
                return False
            self._available -= amount
            return True


class Stream:
    """The host's end of one operation: a queue of checked frames from the guest."""

    def __init__(self, conn: Connection, sid: int, kind: StreamKind) -> None:
        self.conn = conn
        self.id = sid
        self.kind = kind
        self.allowed = ALLOWED[kind]
        self.queue: queue.SimpleQueue[Msg | None] = queue.SimpleQueue()
        self.credit = Credit(conn.window)
        self.replied = False
        self.done = False  # the guest sent its final frame

    def send(self, ftype: int, payload: bytes = b"", flags: int = 0) -> None:
        self.conn.send(p.pack(ftype, self.id, payload, flags))

    def send_json(self, ftype: int, obj: dict[str, Any]) -> None:
        self.conn.send(p.pack_json(ftype, self.id, obj))

    def get(self, deadline: float | None, operation: str, timeout: float | None) -> Msg:
        """The next frame; raises the connection's failure or a timeout."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            msg = self.queue.get(timeout=remaining)
        except queue.Empty:
            raise OperationTimeoutError(operation, timeout or 0.0) from None
        if msg is None:
            raise self.conn.failure()
        return msg

    def abandon(self) -> None:
        """The host gives up on this stream (timeout, early close): tell the guest to stop."""
        if self.done:
            return
        self.conn.abandon(self)
        with contextlib.suppress(GuestAgentError):
            self.send(p.CANCEL)


class Connection:
    """A handshaken socket to the agent plus the reader thread serving it."""

    def __init__(self, sock: socket.socket, vm_id: str, hello: dict[str, Any],
                 decoder: p.FrameDecoder) -> None:
        self.sock = sock
        self.vm_id = vm_id
        self.hello = hello
        window = hello.get("window", p.WRITE_WINDOW)
        self.window = window if isinstance(window, int) and window >= p.DATA_CHUNK else p.DATA_CHUNK
        self._decoder = decoder
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._abandoned: set[int] = set()
        self._next_id = 1
        self._failure: Callable[[], GuestAgentError] | None = None
        self._last_rx = time.monotonic()
        self._ended = threading.Event()
        self.keepalive_interval = KEEPALIVE_INTERVAL
        self.keepalive_timeout = KEEPALIVE_TIMEOUT
        # True while the guest is known to be frozen on purpose (a paused machine):
        # silence is then expected and the keepalive waits instead of failing.
        self.keepalive_hold: Callable[[], bool] | None = None
        self._reader = threading.Thread(target=self._read_loop, name=f"agent-reader-{vm_id}",
                                        daemon=True)
        self._reader.start()
        threading.Thread(target=self._keepalive_loop, name=f"agent-keepalive-{vm_id}",
                         daemon=True).start()

    # ------------------------------------------------------------------ opening
    @classmethod
    def handshake(cls, path: Path, vm_id: str, deadline: float) -> Connection:
        """Connect once and handshake; HandshakeRetry if the peer closes early.

        Raises OSError from connect (the caller decides whether to retry) and
        TimeoutError when the deadline passes without an answer.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(str(path))
            attempt_deadline = time.monotonic() + HANDSHAKE_ATTEMPT
            nonce = secrets.token_hex(8)
            sock.sendall(p.pack_json(p.HELLO, 0, {"version": p.VERSION, "nonce": nonce,
                                                   "caps": list(p.CAPABILITIES)}))
            decoder = p.FrameDecoder()
            skipped = 0
            while True:
                frame = decoder.resync_hello()
                if frame is not None:
                    hello = frame.json()
                    if hello.get("nonce") != nonce:
                        continue  # a stale answer to an earlier connection's hello
                    cls._check_hello(frame, hello, vm_id)
                    sock.settimeout(None)
                    return cls(sock, vm_id, hello, decoder)
                now = time.monotonic()
                if now >= deadline:
                    raise HandshakeTimeout(skipped)
                if now >= attempt_deadline:
                    # our HELLO may have been swallowed by the tail of an earlier
                    # session: a fresh connection makes the guest resynchronise
                    raise HandshakeRetry(skipped)
                sock.settimeout(min(deadline, attempt_deadline) - now)
                try:
                    data = sock.recv(RECV_SIZE)
                except TimeoutError:
                    continue
                if not data:
                    raise HandshakeRetry(skipped)
                skipped += len(data)
                if skipped > 4 * p.MAX_FRAME:
                    raise GuestProtocolError(
                        "The guest sent more than 4 MiB without a valid handshake",
                        vm_id=vm_id)
                decoder.feed(data)
        except BaseException:
            sock.close()
            raise

    @staticmethod
    def _check_hello(frame: p.Frame, hello: dict[str, Any], vm_id: str) -> None:
        if "error" in hello:
            raise GuestProtocolError(f"The guest agent refused the handshake: "
                                     f"{str(hello['error'])[:200]}", vm_id=vm_id)
        if frame.version != p.VERSION or hello.get("version") != p.VERSION:
            raise GuestProtocolError(
                f"The guest agent speaks protocol version {hello.get('version')!r}, "
                f"this host speaks {p.VERSION}", vm_id=vm_id,
                details={"guest_version": str(hello.get("version"))})

    def open(self, kind: StreamKind) -> Stream:
        with self._lock:
            if self._failure is not None:
                raise self._failure()
            stream = Stream(self, self._next_id, kind)
            self._next_id += 1
            self._streams[stream.id] = stream
            return stream

    # ------------------------------------------------------------------ sending
    def send(self, frame: bytes) -> None:
        if self._failure is not None:
            raise self._failure()
        try:
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError:
            self.fail(self._lost)
            raise self.failure() from None

    def abandon(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.pop(stream.id, None) is not None:
                self._abandoned.add(stream.id)
        stream.credit.close()

    def finish(self, stream: Stream) -> None:
        """Forget a stream whose final frame the caller has consumed."""
        with self._lock:
            self._streams.pop(stream.id, None)

    # ------------------------------------------------------------------ failure
    def _lost(self) -> GuestAgentError:
        return CommandExecutionUnavailableError(self.vm_id, "agent connection lost",
                                                LOST_REMEDIATION)

    def failure(self) -> GuestAgentError:
        """A fresh instance of the error that ended this connection."""
        make = self._failure or self._lost
        return make()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def fail(self, make: Callable[[], GuestAgentError]) -> None:
        """End the connection: every waiting and later operation raises ``make()``."""
        with self._lock:
            if self._failure is not None:
                return
            self._failure = make
            streams = list(self._streams.values())
            self._streams.clear()
        self._ended.set()
        for stream in streams:
            stream.credit.close()
            stream.queue.put(None)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.fail(lambda: CommandExecutionUnavailableError(
            self.vm_id, "agent connection closed by the host",
            "This AgentClient was closed; connect a new one."))
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()

    # ---------------------------------------------------------------- liveness
    def _keepalive_loop(self) -> None:
        """Ping a silent guest while operations wait on it; fail the connection if
        nothing answers, so no caller (an untimed exec included) waits forever."""
        while not self._ended.wait(self.keepalive_interval):
            with self._lock:
                waiting = bool(self._streams)
            if not waiting or time.monotonic() - self._last_rx < self.keepalive_interval:
                continue
            hold = self.keepalive_hold
            if hold is not None and _held(hold):
                continue
            try:
                stream = self.open("simple")
                stream.send_json(p.REQUEST, {"op": "ping"})
            except GuestAgentError:
                return  # the connection ended meanwhile
            if not self._await_any_frame(stream):
                if hold is not None and _held(hold):
                    self.abandon(stream)
                    continue
                self._unresponsive()
                return

    def _await_any_frame(self, ping: Stream) -> bool:
        """Wait for the ping's reply; any other frame also proves the guest alive."""
        deadline = time.monotonic() + self.keepalive_timeout
        sent = time.monotonic()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._last_rx > sent
            try:
                ping.queue.get(timeout=min(remaining, 1.0))
                return True  # the reply, or None once the connection failed
            except queue.Empty:
                if self._last_rx > sent:
                    self.abandon(ping)
                    return True

    def _unresponsive(self) -> None:
        vm_id, waited = self.vm_id, self.keepalive_timeout
        self.fail(lambda: CommandExecutionUnavailableError(
            vm_id, f"the guest agent stopped answering (no reply to a keepalive ping "
            f"within {waited:g} s)",
            "The agent was killed, stopped or is starved inside the guest; smolbox "
            "reconnects on the next call (init restarts a killed agent). If it stays "
            "silent, restart the machine (`smolbox restart NAME`)."))

    # ------------------------------------------------------------------ reading
    def _read_loop(self) -> None:
        try:
            self._route_buffered()
            view = memoryview(bytearray(RECV_SIZE))  # reused: feed() copies what it keeps
            while self._failure is None:
                try:
                    n = self.sock.recv_into(view)
                except OSError:
                    n = 0
                if not n:
                    self.fail(self._lost)
                    return
                self._last_rx = time.monotonic()
                self._decoder.feed(view[:n])
                self._route_buffered()
        except p.ProtocolViolation as exc:
            self._violation(str(exc))
        except GuestProtocolError as exc:
            self._violation(exc.message)
        except BaseException as exc:  # never leave callers waiting on a dead reader
            self._violation(f"unexpected error while reading from the guest: {exc!r}")

    def _violation(self, why: str) -> None:
        vm_id = self.vm_id
        self.fail(lambda: GuestProtocolError(f"Guest agent protocol violation: {why}",
                                             vm_id=vm_id, details={"violation": why}))

    def _route_buffered(self) -> None:
        while self._failure is None:
            frame = self._decoder.next_frame()
            if frame is None:
                return
            self._route(frame)

    def _route(self, frame: p.Frame) -> None:
        obj = frame.json() if frame.type in p.CONTROL_TYPES else None
        if obj is not None:
            _check_control(frame.type, obj)  # before any state changes: a failure here
            # must still reach this stream's waiter through fail()
        if frame.type == p.CREDIT_FRAME and len(frame.payload) != p.CREDIT.size:
            raise p.ProtocolViolation("credit frame of the wrong size")
        if frame.stream == 0:
            if frame.type == p.ERROR and obj is not None:
                raise GuestProtocolError(f"the guest reported: {str(obj.get('message'))[:300]}")
            raise p.ProtocolViolation(f"unexpected frame type {frame.type} on stream 0")
        with self._lock:
            stream = self._streams.get(frame.stream)
            if stream is None:
                if frame.stream in self._abandoned:
                    if self._is_final(frame):
                        self._abandoned.discard(frame.stream)
                    return
                raise p.ProtocolViolation(
                    f"frame type {frame.type} for stream {frame.stream}, which is not open")
            if frame.type not in stream.allowed:
                raise p.ProtocolViolation(
                    f"frame type {frame.type} not allowed on a {stream.kind} stream")
            final = self._is_final(frame) or (
                frame.type == p.REPLY and stream.kind in ("simple", "write"))
            if frame.type == p.REPLY and stream.kind == "exec":
                if stream.replied:
                    raise p.ProtocolViolation(f"second reply on stream {frame.stream}")
                stream.replied = True
            if final:
                stream.done = True
                del self._streams[frame.stream]
        if frame.type == p.CREDIT_FRAME:
            stream.credit.grant(p.CREDIT.unpack(frame.payload)[0])
            return
        if final:
            stream.credit.close()
        stream.queue.put(Msg(frame.type, frame.flags, bytes(frame.payload), obj))

    @staticmethod
    def _is_final(frame: p.Frame) -> bool:
        return frame.type in (p.ERROR, p.EXIT) or (frame.type == p.DATA and frame.eof)


def _held(hold: Callable[[], bool]) -> bool:
    try:
        return bool(hold())
    except Exception:  # a failing probe must not keep a dead connection alive
        return False


def _check_control(ftype: int, obj: dict[str, Any]) -> None:
    """Shapes the callers rely on; anything else is a protocol violation."""
    if ftype == p.EXIT:
        for key in ("code", "signal"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not -(1 << 31) <= value < (1 << 31)):
                raise p.ProtocolViolation(f"exit {key} is not an integer")
        if obj.get("code") is None and obj.get("signal") is None:
            raise p.ProtocolViolation("exit without code or signal")
    elif ftype == p.ERROR:
        if not isinstance(obj.get("message"), str):
            raise p.ProtocolViolation("error frame without a message")
        err = obj.get("errno")
        if err is not None and (not isinstance(err, int) or isinstance(err, bool)):
            raise p.ProtocolViolation("error frame with a non-integer errno")
        path = obj.get("path")
        if path is not None and not isinstance(path, str):
            raise p.ProtocolViolation("error frame with a non-string path")

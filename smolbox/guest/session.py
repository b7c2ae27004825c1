"""Guest side plumbing shared by every operation: transports, sessions, credit.

Why separate from the agent: these pieces decide how bytes move (and how fast),
the agent decides what requests mean.  Under software emulation every syscall
and every allocation is expensive, so reads go straight into preallocated
payload buffers with exact-size reads (a virtio-serial read returns at most one
4 KiB buffer), and writes send header and payload with one ``writev`` instead
of concatenating them.

Stdlib only: this file is copied into the guest rootfs.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import select
import socket
import threading
from collections.abc import Sequence
from typing import Any

from smolbox.guest import protocol as p

Buffer = bytes | bytearray | memoryview


def json_bytes(obj: dict[str, Any]) -> bytes:
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


def _advance(views: list[memoryview], sent: int) -> None:
    while sent and views:
        if sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        else:
            views[0] = views[0][sent:]
            sent = 0


class Transport:
    """A byte pipe to the host; ``lock`` keeps whole frames from interleaving."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def readinto(self, buf: memoryview) -> int:
        raise NotImplementedError

    def write_parts(self, parts: Sequence[Buffer]) -> None:
        raise NotImplementedError


class FdTransport(Transport):
    """The virtio-serial port: opened once, lives across host connections.

    The fd is non-blocking because a *blocking* virtio-console write spins the
    vCPU until the host has consumed each 32 KiB buffer; non-blocking writes
    queue up to a virtqueue's worth and only wait (in poll) when it is full.
    A poll that reports hang-up means no host is connected: writes fail with
    EPIPE (the session is over) and reads return EOF.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        os.set_blocking(fd, False)

    def _wait(self, event: int) -> int:
        poller = select.poll()
        poller.register(self.fd, event)
        while True:
            ready = poller.poll(1000)
            if ready:
                return ready[0][1]

    def readinto(self, buf: memoryview) -> int:
        while True:
            try:
                return os.readv(self.fd, [buf])
            except BlockingIOError:
                if not self._wait(select.POLLIN) & select.POLLIN:
                    return 0  # hang-up: no host connected

    def write_parts(self, parts: Sequence[Buffer]) -> None:
        views = [memoryview(part) for part in parts if len(part)]
        while views:
            try:
                _advance(views, os.writev(self.fd, views))
            except BlockingIOError:
                events = self._wait(select.POLLOUT)
                if not events & select.POLLOUT and events & (select.POLLHUP | select.POLLERR):
                    raise BrokenPipeError(errno.EPIPE, "no host connected") from None


class SocketTransport(Transport):
    """One accepted unix-socket connection (the host-side test mode)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def readinto(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def write_parts(self, parts: Sequence[Buffer]) -> None:
        views = [memoryview(part) for part in parts if len(part)]
        while views:
            _advance(views, self.sock.sendmsg(views))


class FrameReader:
    """Reads frames of an established session with exact-size reads.

    Each payload is read straight into its own buffer, so a 256 KiB file chunk
    costs its 4 KiB port reads and nothing else (no re-buffering, no copies).
    """

    def __init__(self, transport: Transport, leftover: bytes = b"") -> None:
        self.transport = transport
        self.pending = bytearray(leftover)

    def _exact(self, size: int) -> bytearray | None:
        buf = bytearray(size)
        got = 0
        if self.pending:
            got = min(size, len(self.pending))
            buf[:got] = self.pending[:got]
            del self.pending[:got]
        view = memoryview(buf)
        while got < size:
            try:
                n = self.transport.readinto(view[got:])
            except OSError:
                n = 0
            if n == 0:
                return None
            got += n
        return buf

    def next(self) -> p.Frame | None:
        """The next frame; None at EOF; ProtocolViolation for a bad header."""
        head = self._exact(p.HEADER_SIZE)
        if head is None:
            return None
        ftype, flags, stream, length = p.parse_header(head)
        payload = self._exact(length) if length else bytearray()
        if payload is None:
            return None
        return p.Frame(ftype, flags, stream, payload)

    def take_rest(self) -> bytes:
        rest = bytes(self.pending)
        self.pending.clear()
        return rest


# -------------------------------------------------------------------------------- session


class Handler:
    """Receives the host's frames for one stream."""

    def on_frame(self, frame: p.Frame) -> None:
        """Data/control frames from the host for this stream (default: ignore)."""

    def session_closed(self) -> None:
        """The host went away (or cancelled the stream)."""


class Session:
    """One host connection: the streams it opened and the way back to it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.alive = True
        self.handlers: dict[int, Handler] = {}
        self.handlers_lock = threading.Lock()

    def send_parts(self, ftype: int, stream: int, payload: Buffer = b"", flags: int = 0) -> bool:
        """Write one frame; False once the session is over (the frame is dropped)."""
        header = p.HEADER.pack(p.MAGIC, p.VERSION, ftype, flags, stream, len(payload))
        with self.transport.lock:
            if not self.alive:
                return False
            try:
                self.transport.write_parts((header, payload))
            except OSError:
                self.alive = False
                return False
        return True

    def send_json(self, ftype: int, stream: int, obj: dict[str, Any]) -> bool:
        return self.send_parts(ftype, stream, json_bytes(obj))

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
            self.session.send_parts(p.CREDIT_FRAME, self.stream, p.CREDIT.pack(self.consumed))
            self.consumed = 0

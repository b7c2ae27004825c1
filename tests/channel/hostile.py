"""HostileGuest: a fake guest agent that breaks the protocol on purpose.

Failure injection only: the real agent never sends these frames, so tests of the
host's defences need a peer that does.  Each accepted connection runs the next
queued *script* (a function given the socket and the client's HELLO nonce); with
no script queued the connection is closed at once.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smolbox.guest import protocol as p

Script = Callable[["GuestSide"], None]


class GuestSide:
    """The hostile end of one connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.decoder = p.FrameDecoder()
        self.nonce = ""

    def read_hello(self) -> None:
        while True:
            frame = self.decoder.resync_hello()
            if frame is not None:
                self.nonce = str(frame.json().get("nonce"))
                return
            data = self.conn.recv(65536)
            if not data:
                raise EOFError
            self.decoder.feed(data)

    def read_frame(self) -> p.Frame:
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            data = self.conn.recv(65536)
            if not data:
                raise EOFError
            self.decoder.feed(data)

    def hello(self, version: int = p.VERSION, **extra: Any) -> None:
        body = {"version": version, "nonce": self.nonce, "caps": [], "window": 1 << 20, **extra}
        self.send(raw_frame(p.HELLO, 0, json.dumps(body).encode(), version=version))

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def hold(self) -> None:
        """Keep the connection open until the client goes away."""
        with contextlib.suppress(OSError):
            while self.conn.recv(65536):
                pass


def raw_frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0,
              version: int = p.VERSION, length: int | None = None) -> bytes:
    """Any header at all, including ones the real encoder refuses to build."""
    size = len(payload) if length is None else length
    return struct.pack("!2sBBHII", p.MAGIC, version, ftype, flags, stream, size) + payload


def jframe(ftype: int, stream: int, obj: object) -> bytes:
    return raw_frame(ftype, stream, json.dumps(obj).encode())


class HostileGuest:
    """A unix-socket server playing a misbehaving guest, one script per connection."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sbh-"))
        self.socket = self.dir / "hostile.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.socket))
        self.listener.listen(8)
        self.scripts: queue.SimpleQueue[Script] = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    script = self.scripts.get_nowait()
                except queue.Empty:
                    continue
                side = GuestSide(conn)
                try:
                    side.read_hello()
                    script(side)
                except (EOFError, OSError):
                    pass
                except BaseException as exc:  # a broken script must fail the test
                    self.errors.append(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.dir.rmdir()

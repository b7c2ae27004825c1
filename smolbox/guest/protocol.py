"""Wire format of the smolbox agent protocol, shared by the guest and the host.

Why a fixed binary header instead of JSON lines: exec output and file contents
are most of the traffic, and they must move as raw bytes without per-chunk
encoding.  Every frame is a 14-byte header followed by at most ``MAX_FRAME``
payload bytes.  Control frames (requests, replies, exit status) carry small JSON
objects; data frames (stdout, stderr, stdin, file chunks) carry raw bytes.

The two-byte magic lets either side find the start of a new session's
handshake in a byte stream that may still hold the tail of an old connection
(a virtio-serial port is one long-lived pipe across host reconnects).

This module is stdlib-only: it runs inside the guest too.
"""

from __future__ import annotations

import json
import struct
from typing import Any

MAGIC = b"SB"
VERSION = 1
HEADER = struct.Struct("!2sBBHII")  # magic, version, type, flags, stream id, length
HEADER_SIZE = HEADER.size
MAX_FRAME = 1 << 20  # largest payload either side accepts
DATA_CHUNK = 256 * 1024  # payload size used for bulk data (file and output chunks)
CREDIT = struct.Struct("!Q")  # payload of a CREDIT frame: bytes the sender may add
WRITE_WINDOW = 8 << 20  # bytes of file/stdin data the guest lets the host send ahead
PORT_NAME = "org.smolbox.agent"

# Frame types.  Stream 0 is the connection itself (handshake, errors about it).
HELLO = 1  # control: handshake, host -> guest then guest -> host
REQUEST = 2  # control: host opens a stream with {"op": ...}
REPLY = 3  # control: guest answers a request; final unless the op streams
ERROR = 4  # control: the op failed; always final for the stream
STDOUT = 5  # data: guest -> host
STDERR = 6  # data: guest -> host
STDIN = 7  # data: host -> guest; FLAG_EOF closes the process's stdin
EXIT = 8  # control: process ended {"code", "signal", "timed_out"}; final
DATA = 9  # data: file chunk in either direction; FLAG_EOF marks the last one
CREDIT_FRAME = 10  # raw CREDIT: receiver grants the sender more bytes
SIGNAL = 11  # control: host -> guest {"signal": n}
CANCEL = 12  # control: host abandons a stream; guest stops work on it

FLAG_EOF = 0x1
# On a file transfer's final DATA frame (with FLAG_EOF): the payload is not file data
# but the CRC-32 of the whole file (4 bytes, big-endian), checked by the receiver.
FLAG_CRC = 0x2
CRC = struct.Struct("!I")

CONTROL_TYPES = frozenset({HELLO, REQUEST, REPLY, ERROR, EXIT, SIGNAL, CANCEL})
DATA_TYPES = frozenset({STDOUT, STDERR, STDIN, DATA, CREDIT_FRAME})
KNOWN_TYPES = CONTROL_TYPES | DATA_TYPES

CAPABILITIES = (
    "exec", "stream", "spawn", "attach", "signal", "files", "env", "identity", "shutdown",
    "blockxfer", "blockxfer-read", "crc32", "ps", "fsops",
)


class ProtocolViolation(Exception):
    """A peer sent bytes that are not a valid frame (either side maps it to its own error)."""


def pack(ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame as bytes; refuses payloads the peer would reject."""
    if len(payload) > MAX_FRAME:
        raise ProtocolViolation(f"payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(MAGIC, VERSION, ftype, flags, stream, len(payload)) + payload


def pack_json(ftype: int, stream: int, obj: dict[str, Any], flags: int = 0) -> bytes:
    return pack(ftype, stream, json.dumps(obj, separators=(",", ":")).encode(), flags)


def decode_json(payload: bytes | bytearray) -> dict[str, Any]:
    """A control payload as a dict; anything else is a violation."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolViolation(f"control payload is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolation("control payload is not a JSON object")
    return obj


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int, int]:
    """Check one header; returns (type, flags, stream, length) or raises ProtocolViolation."""
    magic, version, ftype, flags, stream, length = HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        raise ProtocolViolation(f"bad frame magic {bytes(magic)!r}")
    if version != VERSION:
        raise ProtocolViolation(f"unsupported protocol version {version}")
    if ftype not in KNOWN_TYPES:
        raise ProtocolViolation(f"unknown frame type {ftype}")
    if length > MAX_FRAME:
        raise ProtocolViolation(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return ftype, flags, stream, length


class Frame:
    """A decoded frame (a plain class with slots: allocated per frame, keep it cheap)."""

    __slots__ = ("flags", "payload", "stream", "type", "version")

    def __init__(self, ftype: int, flags: int, stream: int, payload: bytes | bytearray,
                 version: int = VERSION) -> None:
        self.version = version
        self.type = ftype
        self.flags = flags
        self.stream = stream
        self.payload = payload

    def json(self) -> dict[str, Any]:
        return decode_json(self.payload)

    @property
    def eof(self) -> bool:
        return bool(self.flags & FLAG_EOF)

    def __repr__(self) -> str:
        return f"Frame(type={self.type}, stream={self.stream}, len={len(self.payload)})"


class FrameDecoder:
    """Incremental parser: feed bytes, take complete frames.

    Strict mode (an established session): bad magic, version, type or length is
    a violation.  Handshake mode (``resync``): garbage before a HELLO frame is
    skipped, because it may be the tail of a previous connection.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """Everything buffered and not yet parsed (handed to a FrameReader)."""
        rest = bytes(self._buf[self._pos:])
        self.clear()
        return rest

    def clear(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        ftype, flags, stream, length = parse_header(buf, pos)
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_SIZE : end])
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        return Frame(ftype, flags, stream, payload)

    def resync_hello(self) -> Frame | None:
        """Skip to the next plausible HELLO frame on stream 0 and return it.

        A candidate that turns out to be bogus (length too big, payload not JSON)
        is skipped one byte at a time; the caller checks the payload's nonce.
        """
        while True:
            buf = self._buf
            idx = buf.find(MAGIC, self._pos)
            if idx < 0:
                # keep a trailing 'S' that may start the next magic
                keep = 1 if buf.endswith(MAGIC[:1]) else 0
                self._pos = len(buf) - keep
                return None
            self._pos = idx
            if len(buf) - idx < HEADER_SIZE:
                return None
            _m, version, ftype, flags, stream, length = HEADER.unpack_from(buf, idx)
            if ftype != HELLO or stream != 0 or length > 64 * 1024:
                self._pos = idx + 1
                continue
            end = idx + HEADER_SIZE + length
            if len(buf) < end:
                return None
            frame = Frame(ftype, flags, stream, bytes(buf[idx + HEADER_SIZE : end]), version)
            try:
                frame.json()
            except ProtocolViolation:
                self._pos = idx + 1
                continue
            self._pos = end
            return frame

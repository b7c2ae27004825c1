"""Framing shared by guest and host: round trips, limits, resynchronisation."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smolbox.guest import protocol as p
from smolbox.guest.session import FrameReader, SocketTransport

_FRAMES = st.lists(st.tuples(st.sampled_from(sorted(p.KNOWN_TYPES)),
                             st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                             st.binary(max_size=3000)), max_size=8)


@given(frames=_FRAMES, cuts=st.lists(st.integers(1, 5000), max_size=20))
def test_frames_survive_any_split(frames: list[tuple[int, int, int, bytes]],
                                  cuts: list[int]) -> None:
    wire = b"".join(p.pack(t, s, data, flags) for t, flags, s, data in frames)
    decoder = p.FrameDecoder()
    got = []
    pos = 0
    for size in [*cuts, len(wire)]:
        decoder.feed(wire[pos:pos + size])
        pos += size
        while (frame := decoder.next_frame()) is not None:
            got.append((frame.type, frame.flags, frame.stream, bytes(frame.payload)))
    assert got == frames


def _header(magic: bytes = p.MAGIC, version: int = p.VERSION, ftype: int = p.STDOUT,
            length: int = 0) -> bytes:
    return struct.pack("!2sBBHII", magic, version, ftype, 0, 1, length)


@pytest.mark.parametrize(("header", "why"), [
    (_header(magic=b"XX"), "magic"), (_header(version=2), "version"),
    (_header(ftype=99), "type"), (_header(length=p.MAX_FRAME + 1), "exceeds"),
])
def test_decoder_rejects_bad_headers(header: bytes, why: str) -> None:
    decoder = p.FrameDecoder()
    decoder.feed(header)
    with pytest.raises(p.ProtocolViolation, match=why):
        decoder.next_frame()


def test_pack_refuses_oversized_payloads() -> None:
    p.pack(p.DATA, 1, b"x" * p.MAX_FRAME)
    with pytest.raises(p.ProtocolViolation):
        p.pack(p.DATA, 1, b"x" * (p.MAX_FRAME + 1))


def test_control_payloads_must_be_json_objects() -> None:
    assert p.decode_json(b'{"a": 1}') == {"a": 1}
    for bad in (b"[1]", b"{", b"\xff", b"null"):
        with pytest.raises(p.ProtocolViolation):
            p.decode_json(bad)


@given(garbage=st.binary(max_size=300))
def test_resync_finds_the_hello_after_any_garbage(garbage: bytes) -> None:
    hello = p.pack_json(p.HELLO, 0, {"version": 1, "nonce": "n1"})
    decoder = p.FrameDecoder()
    decoder.feed(garbage + hello + p.pack(p.STDOUT, 3, b"after"))
    frame = None
    while frame is None or frame.json().get("nonce") != "n1":
        frame = decoder.resync_hello()
        assert frame is not None
    assert frame.version == p.VERSION
    rest = decoder.take_rest()
    assert rest == p.pack(p.STDOUT, 3, b"after")


def test_resync_skips_lookalikes_and_keeps_partial_input() -> None:
    decoder = p.FrameDecoder()
    bogus = struct.pack("!2sBBHII", p.MAGIC, 1, p.HELLO, 0, 0, 5) + b"notjs"
    hello = p.pack_json(p.HELLO, 0, {"version": 1, "nonce": "x"})
    decoder.feed(bogus + hello[:10])
    assert decoder.resync_hello() is None  # waits for the rest
    decoder.feed(hello[10:])
    frame = decoder.resync_hello()
    assert frame is not None and frame.json()["nonce"] == "x"
    # a wrong version is still returned, so the receiver can reject it explicitly
    decoder.feed(p.HEADER.pack(p.MAGIC, 7, p.HELLO, 0, 0, 2) + b"{}")
    frame = decoder.resync_hello()
    assert frame is not None and frame.version == 7


def test_frame_reader_reads_exact_frames_and_keeps_leftovers() -> None:
    left, right = socket.socketpair()
    with left, right:
        leftover = p.pack(p.STDIN, 1, b"first")
        wire = (p.pack(p.DATA, 2, b"y" * 300_000, p.FLAG_EOF)
                + p.pack_json(p.REQUEST, 3, {"op": "ping"}))

        def send() -> None:
            right.sendall(wire)
            right.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        reader = FrameReader(SocketTransport(left), leftover)
        first = reader.next()
        assert first is not None and (first.type, bytes(first.payload)) == (p.STDIN, b"first")
        data = reader.next()
        assert data is not None and data.eof and len(data.payload) == 300_000
        req = reader.next()
        assert req is not None and json.loads(req.payload) == {"op": "ping"}
        assert reader.next() is None  # EOF
        sender.join()

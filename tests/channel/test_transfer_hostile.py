"""Malformed transfer replies and corrupted transfer bytes give catalogue errors.

A fake agent (``HostileGuest``) answers the transfer ops with what a broken or
compromised guest could send; the host must raise ``GuestProtocolError`` or
``TransferCorruptError`` — never ``OSError``, ``MemoryError`` or ``ValueError`` — and
never hand back a silently wrong file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from smolbox.channel import AgentClient
from smolbox.engine.transfer import XFER_BYTES, create_xfer_disk, read_guest_file, write_guest_file
from smolbox.errors import GuestProtocolError, TransferCorruptError
from smolbox.guest import protocol as p

from .hostile import GuestSide, HostileGuest, jframe, raw_frame

CAPS = ["blockxfer", "blockxfer-read", "crc32"]


@pytest.fixture()
def xfer(tmp_path: Path) -> Path:
    disk = tmp_path / "xfer.img"
    create_xfer_disk(disk)
    return disk


def _client(guest: HostileGuest, answer: Callable[[GuestSide, p.Frame], None]) -> AgentClient:
    """A connection whose guest answers each request with ``answer``."""
    def script(side: GuestSide) -> None:
        side.hello(caps=CAPS)
        while True:
            answer(side, side.read_frame())
    guest.scripts.put(script)
    return AgentClient.connect(guest.socket, vm_id="hostile", timeout=5)


def _reply(obj: dict[str, object]) -> Callable[[GuestSide, p.Frame], None]:
    def answer(side: GuestSide, frame: p.Frame) -> None:
        if frame.type == p.REQUEST:
            side.send(jframe(p.REPLY, frame.stream, obj))
    return answer


@pytest.mark.parametrize("read", [-1, 1 << 40, "abc", None, True, 2.5])
def test_malformed_read_counts_are_protocol_errors(hostile: HostileGuest, xfer: Path,
                                                   read: object) -> None:
    with _client(hostile, _reply({"read": read, "size": 10, "crc32": 0})) as client, \
            pytest.raises(GuestProtocolError):
        b"".join(read_guest_file(client, xfer, "/file"))


@pytest.mark.parametrize("on_disk", [b"jello", b"hello"])
def test_transfer_disk_bytes_are_checked(hostile: HostileGuest, xfer: Path,
                                         on_disk: bytes) -> None:
    """The agent copied b"hello" (and says so by its CRC); garbage on the disk instead
    is TRANSFER_CORRUPT, intact bytes pass."""
    with open(xfer, "r+b") as disk:
        disk.write(on_disk)
    reply = {"read": 5, "size": 5, "crc32": zlib.crc32(b"hello")}
    with _client(hostile, _reply(reply)) as client:
        if on_disk == b"hello":
            assert b"".join(read_guest_file(client, xfer, "/file")) == b"hello"
            return
        with pytest.raises(TransferCorruptError) as err:
            b"".join(read_guest_file(client, xfer, "/file"))
        assert err.value.details["transport"] == "transfer-disk"


def test_a_missing_checksum_is_a_protocol_error(hostile: HostileGuest, xfer: Path) -> None:
    with _client(hostile, _reply({"read": 5, "size": 5})) as client, \
            pytest.raises(GuestProtocolError):
        b"".join(read_guest_file(client, xfer, "/file"))


def _stream_file(data: bytes, crc: bytes | None) -> Callable[[GuestSide, p.Frame], None]:
    def answer(side: GuestSide, frame: p.Frame) -> None:
        if frame.type != p.REQUEST:
            return
        side.send(raw_frame(p.DATA, frame.stream, data))
        if crc is None:
            side.send(raw_frame(p.DATA, frame.stream, b"", p.FLAG_EOF))
        else:
            side.send(raw_frame(p.DATA, frame.stream, crc, p.FLAG_EOF | p.FLAG_CRC))
    return answer


def test_stream_download_checks_the_whole_file_crc(hostile: HostileGuest,
                                                   tmp_path: Path) -> None:
    wrong = p.CRC.pack(zlib.crc32(b"other"))
    with _client(hostile, _stream_file(b"content", wrong)) as client:
        with pytest.raises(TransferCorruptError):
            client.read_file("/file")
        target = tmp_path / "kept"
        with pytest.raises(TransferCorruptError):
            client.download("/file", target)
        assert not target.exists()  # a corrupt download is never kept
    with _client(hostile, _stream_file(b"content", None)) as client, \
            pytest.raises(GuestProtocolError):
        client.read_file("/file")
    right = p.CRC.pack(zlib.crc32(b"content"))
    with _client(hostile, _stream_file(b"content", right)) as client:
        assert client.read_file("/file") == b"content"


def test_a_guest_reported_integrity_failure_is_transfer_corrupt(hostile: HostileGuest,
                                                                xfer: Path) -> None:
    """On upload the agent checks each chunk's CRC; its refusal reaches the caller typed."""
    def answer(side: GuestSide, frame: p.Frame) -> None:
        if frame.type != p.REQUEST:
            return
        op = frame.json().get("op")
        if op == "xfer_begin":
            side.send(jframe(p.REPLY, frame.stream, {"token": "t"}))
        elif op == "xfer_chunk":
            side.send(jframe(p.ERROR, frame.stream, {
                "message": "CRC-32 mismatch", "kind": "integrity", "path": "/file"}))
        else:
            side.send(jframe(p.REPLY, frame.stream, {}))
    with _client(hostile, answer) as client, pytest.raises(TransferCorruptError):
        write_guest_file(client, xfer, "/file", b"x" * (2 << 20), mode=0o644)


def test_upload_chunks_carry_their_crc(hostile: HostileGuest, xfer: Path) -> None:
    seen: list[dict[str, object]] = []

    def answer(side: GuestSide, frame: p.Frame) -> None:
        if frame.type != p.REQUEST:
            return
        req = frame.json()
        seen.append(req)
        side.send(jframe(p.REPLY, frame.stream, {"token": "t"} if req["op"] == "xfer_begin"
                         else {}))
    data = bytes(range(256)) * 8192  # 2 MiB
    with _client(hostile, answer) as client:
        assert write_guest_file(client, xfer, "/file", data, mode=0o644) == "transfer-disk"
    chunks = [req for req in seen if req["op"] == "xfer_chunk"]
    assert chunks and chunks[0]["crc32"] == zlib.crc32(data[:XFER_BYTES])

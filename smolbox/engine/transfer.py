"""Fast transfers through a machine's transfer disk (the host half of guest/blockxfer.py).

The host writes each chunk of the file into the transfer disk's backing file
(QEMU opens it with the host page cache, so it sees the bytes at once) and asks
the agent to copy the chunk from the device into the target's temp file; a final
commit renames it into place. One upload at a time per machine: the backing file is
``flock``-ed, and a caller that finds it busy (or an agent without the capability)
falls back to the virtio-serial stream, which is slower but always there.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from smolbox import errors
from smolbox.channel import AgentClient
from smolbox.channel.client import check_guest_path
from smolbox.engine.flock import try_exclusive

XFER_BYTES = 16 << 20  # size of the transfer disk (sparse)
CHUNK = XFER_BYTES
CAPABILITY = "blockxfer"
READ_CAPABILITY = "blockxfer-read"
MIN_FAST_BYTES = 1 << 20  # below this the serial stream is as quick and simpler


def create_xfer_disk(path: Path) -> None:
    """A sparse raw file of ``XFER_BYTES``; its content never matters between uploads."""
    with open(path, "ab") as handle:
        handle.truncate(XFER_BYTES)


def _claim(client: AgentClient, xfer_path: Path, guest_path: str, capability: str
           ) -> int | None:
    """The locked transfer disk for one transfer, or None: fall back to the stream."""
    check_guest_path(guest_path)
    if not client.supports(capability) or not xfer_path.exists():
        return None
    return try_exclusive(xfer_path)


def download_chunks(client: AgentClient, xfer_path: Path, guest_path: str
                    ) -> Iterator[bytes] | None:
    """``guest_path`` in chunks through the disk, or None (nothing done) when the fast
    path is busy or unavailable. The returned generator holds the disk until it is
    exhausted or closed. Like the stream, a file that changes meanwhile is read as it
    is chunk by chunk."""
    lock_fd = _claim(client, xfer_path, guest_path, READ_CAPABILITY)
    return None if lock_fd is None else _chunks(client, lock_fd, guest_path)


def _chunks(client: AgentClient, lock_fd: int, guest_path: str) -> Iterator[bytes]:
    """Each chunk is checked against the CRC-32 the agent computed of what it copied
    onto the disk: bytes that changed on the way (another writer of the device, a
    stale page) raise ``TransferCorruptError`` instead of landing in the file."""
    with_crc = client.supports("crc32")
    try:
        offset = 0
        while True:
            reply = client.request("xfer_read", path=guest_path, file_offset=offset,
                                   length=CHUNK, disk_offset=0)
            got = _reply_int(client, reply, "read", CHUNK)
            if got:
                chunk = os.pread(lock_fd, got, 0)
                if len(chunk) != got or (with_crc and zlib.crc32(chunk) != _reply_int(
                        client, reply, "crc32", 0xFFFFFFFF)):
                    raise errors.TransferCorruptError(guest_path, offset, "transfer-disk",
                                                      client.vm_id)
                yield chunk
                offset += got
            if got < CHUNK:
                return
    finally:
        os.close(lock_fd)


def _reply_int(client: AgentClient, reply: dict[str, object], key: str, limit: int) -> int:
    """A field of an agent reply that must be an integer in [0, limit]: anything else
    (a negative, 2**40, "abc") is the guest breaking the protocol."""
    value = reply.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise errors.GuestProtocolError(
            f"The agent's reply field {key!r} is {str(value)[:40]!r}, not an integer "
            f"between 0 and {limit}", vm_id=client.vm_id, details={"field": key})
    return value


def upload_via_disk(client: AgentClient, xfer_path: Path, source: BinaryIO,
                    guest_path: str, *, mode: int) -> bool:
    """Copy ``source`` to ``guest_path``; False (nothing done) if the fast path is busy
    or unavailable, so the caller can use the serial stream instead."""
    lock_fd = _claim(client, xfer_path, guest_path, CAPABILITY)
    if lock_fd is None:
        return False
    try:
        token = client.request("xfer_begin", path=guest_path, mode=mode).get("token")
        if not isinstance(token, str) or not token:
            raise errors.GuestProtocolError("The agent's xfer_begin reply has no token",
                                            vm_id=client.vm_id)
        try:
            offset = 0
            while True:
                try:
                    chunk = source.read(CHUNK)
                except OSError as exc:
                    raise errors.GuestFileError(
                        f"upload: reading the source failed: {exc}", path=guest_path,
                        errno=exc.errno) from None
                if not chunk:
                    break
                os.pwrite(lock_fd, chunk, 0)
                client.request("xfer_chunk", token=token, disk_offset=0, file_offset=offset,
                               length=len(chunk), crc32=zlib.crc32(chunk))
                offset += len(chunk)
            client.request("xfer_commit", token=token)
        except BaseException:
            with suppress(errors.SmolboxError):
                client.request("xfer_abort", token=token, timeout=10)
            raise
        return True
    finally:
        os.close(lock_fd)  # releases the flock


def _remaining(source: BinaryIO) -> int | None:
    """Bytes left in a seekable source (None when it cannot tell, e.g. a pipe)."""
    try:
        if not source.seekable():
            return None
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
        return end - here
    except (OSError, ValueError):
        return None


def write_guest_file(client: AgentClient, xfer_path: Path, path: str,
                     data: bytes | BinaryIO, *, mode: int) -> str:
    """Write a guest file atomically; returns the path taken: ``"transfer-disk"`` for
    large files when the disk is free, else ``"stream"`` (virtio-serial)."""
    source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    size = len(data) if isinstance(data, bytes | bytearray) else _remaining(source)
    if size is None or size >= MIN_FAST_BYTES:
        start = source.tell() if source.seekable() else None
        if upload_via_disk(client, xfer_path, source, path, mode=mode):
            return "transfer-disk"
        if start is not None:
            source.seek(start)
    client.write_file(path, source, mode=mode)
    return "stream"


def read_guest_file(client: AgentClient, xfer_path: Path, path: str) -> Iterator[bytes]:
    """A guest file in chunks, through the transfer disk when it is free."""
    chunks = download_chunks(client, xfer_path, path)
    yield from (chunks if chunks is not None else client.read_file_stream(path))

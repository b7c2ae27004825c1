"""File operations through the real agent: round trips, streaming, atomicity, errors."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from smolbox.channel import AgentClient
from smolbox.errors import GuestFileError, GuestFileNotFoundError, ValidationError


def test_write_read_round_trip_with_mode(client: AgentClient, scratch: str) -> None:
    path = f"{scratch}/hello.bin"
    data = bytes(range(256)) * 10
    client.write_file(path, data, mode=0o600)
    assert client.read_file(path) == data
    st = client.stat(path)
    assert (st.type, st.size, st.mode, st.name) == ("file", len(data), 0o600, "hello.bin")
    assert Path(path).read_bytes() == data  # the agent runs on this host in tests
    client.write_file(path, b"")  # overwrite with an empty file
    assert client.read_file(path) == b""


def test_sixty_four_mib_streamed_both_ways(client: AgentClient, scratch: str,
                                           tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    with open(src, "wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1 << 20))
    client.upload(src, f"{scratch}/big.bin")
    dst = tmp_path / "dst.bin"
    client.download(f"{scratch}/big.bin", dst)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest
    assert client.stat(f"{scratch}/big.bin").size == 64 << 20
    chunks = list(client.read_file_stream(f"{scratch}/big.bin"))
    assert len(chunks) > 1 and sum(map(len, chunks)) == 64 << 20
    assert list(tmp_path.iterdir()) == [src, dst] or sorted(tmp_path.iterdir()) == sorted(
        [src, dst])  # no temp file left by download


def test_upload_keeps_the_host_mode(client: AgentClient, scratch: str, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    client.upload(script, f"{scratch}/run.sh")
    assert client.stat(f"{scratch}/run.sh").mode == 0o755
    assert client.exec([f"{scratch}/run.sh"]).stdout == "ran\n"


class _FailingReader(io.RawIOBase):
    """A source that breaks after a few chunks (failure injection: a real file cannot)."""

    def __init__(self, good_chunks: int) -> None:
        self.left = good_chunks

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left == 0:
            raise OSError(errno.EIO, "injected read failure")
        self.left -= 1
        return b"x" * (size if size > 0 else 1024)


def test_failed_write_leaves_no_partial_file(client: AgentClient, scratch: str) -> None:
    path = f"{scratch}/atomic.txt"
    client.write_file(path, b"old content")
    with pytest.raises(GuestFileError) as info:
        client.write_file(path, _FailingReader(good_chunks=3))  # type: ignore[arg-type]
    assert info.value.errno == errno.EIO
    assert client.read_file(path) == b"old content"
    # the cancelled transfer's temp file is removed by the guest (asynchronously)
    for _ in range(100):
        names = [e.name for e in client.list_dir(scratch)]
        if names == ["atomic.txt"]:
            break
        time.sleep(0.02)
    assert names == ["atomic.txt"]
    assert client.exec("echo still fine").stdout == "still fine\n"


def test_mkdir_list_stat_remove(client: AgentClient, scratch: str) -> None:
    client.mkdir(f"{scratch}/a/b/c")
    client.write_file(f"{scratch}/a/b/c/f.txt", b"1")
    client.write_file(f"{scratch}/a/top.txt", b"22")
    os.symlink("top.txt", f"{scratch}/a/link")
    entries = client.list_dir(f"{scratch}/a")
    assert [(e.name, e.type) for e in entries] == [("b", "dir"), ("link", "symlink"),
                                                   ("top.txt", "file")]
    assert entries[1].target == "top.txt" and entries[2].size == 2
    assert client.stat(f"{scratch}/a/b").is_dir
    with pytest.raises(GuestFileError) as info:
        client.remove(f"{scratch}/a")  # not empty, not recursive
    assert info.value.errno == errno.ENOTEMPTY
    client.remove(f"{scratch}/a", recursive=True)
    assert not client.exists(f"{scratch}/a")
    with pytest.raises(GuestFileError):
        client.mkdir(f"{scratch}/x/y", parents=False)


def test_missing_paths_raise_not_found(client: AgentClient, scratch: str) -> None:
    missing = f"{scratch}/nope"
    for op in (lambda: client.read_file(missing), lambda: client.stat(missing),
               lambda: client.list_dir(missing), lambda: client.remove(missing),
               lambda: client.write_file(f"{missing}/dir/file", b"x")):
        with pytest.raises(GuestFileNotFoundError) as info:
            op()
        assert info.value.errno == errno.ENOENT and info.value.code == "GUEST_FILE_NOT_FOUND"
    with pytest.raises(GuestFileError) as err:
        client.read_file(scratch)
    assert err.value.errno == errno.EISDIR


def test_relative_paths_are_rejected_before_sending(client: AgentClient) -> None:
    calls = [lambda: client.write_file("rel/x", b""), lambda: client.read_file("x"),
             lambda: client.read_file_stream("x"), lambda: client.mkdir("a"),
             lambda: client.list_dir(""), lambda: client.stat("./x"),
             lambda: client.remove("x"), lambda: client.download("x", "/tmp/x"),
             lambda: client.write_file("/a\0b", b"")]
    for call in calls:
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == "path"


def test_host_side_errors_are_typed(client: AgentClient, scratch: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        client.upload(tmp_path / "missing", f"{scratch}/x")
    assert info.value.field == "host_path"
    client.write_file(f"{scratch}/f", b"data")
    with pytest.raises(ValidationError):
        client.download(f"{scratch}/f", tmp_path / "no-dir" / "f")
    with pytest.raises(GuestFileNotFoundError):
        client.download(f"{scratch}/missing", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

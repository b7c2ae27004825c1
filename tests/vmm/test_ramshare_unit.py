"""The sealed RAM copy for jailed clones, with a real keeper process and a plain file
standing in for a snapshot's RAM (the VM side is in ``test_jail_vm.py``)."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm import ramshare


def _ram_file(tmp_path: Path) -> Path:
    ram = tmp_path / "ram"
    with open(ram, "wb") as handle:  # data, a 4 MiB hole, data: holes must stay holes
        handle.write(b"A" * 4096)
        handle.seek(4 << 20)
        handle.write(b"B" * 4096)
    return ram


def _keeper(state: Path) -> ProcessIdentity:
    import json

    record = json.loads(next((state / ramshare.RAM_DIR).glob("*.json")).read_text())
    return ProcessIdentity(int(record["pid"]), int(record["start_time"]))


def _wait_gone(identity: ProcessIdentity, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while identity.is_alive():
        assert time.monotonic() < deadline, "the keeper outlived its reason to live"
        time.sleep(0.05)


def test_the_copy_reads_like_the_file_maps_copy_on_write_and_refuses_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLBOX_RAM_KEEPER_IDLE", "1")
    ram, state = _ram_file(tmp_path), tmp_path / "state"
    fd, key = ramshare.open_shared(ram, state)
    try:
        assert os.pread(fd, 4, 0) == b"AAAA" and os.pread(fd, 4, 4 << 20) == b"BBBB"
        assert os.pread(fd, 4, 8192) == b"\0\0\0\0"
        # What QEMU does: reopen read-write through /proc/self/fd, map it privately.
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            view = mmap.mmap(rw, os.fstat(rw).st_size, flags=mmap.MAP_PRIVATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
            view[:4] = b"ZZZZ"  # the guest writes its own copy of the page
            assert view[:4] == b"ZZZZ" and os.pread(fd, 4, 0) == b"AAAA"
            view.close()
            with pytest.raises(PermissionError):
                os.pwrite(rw, b"evil", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(rw, 0)
            with pytest.raises(OSError):
                mmap.mmap(rw, 4096, flags=mmap.MAP_SHARED,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(rw)
        # A second clone gets the same memfd (its pages are shared), not a new copy.
        again, same_key = ramshare.open_shared(ram, state)
        assert same_key == key and os.fstat(again).st_ino == os.fstat(fd).st_ino
        os.close(again)
        assert ram.read_bytes()[:4] == b"AAAA"
    finally:
        os.close(fd)
    _wait_gone(_keeper(state), 10)  # no user registered: it leaves once idle
    assert any(ramshare.sweep(state))


def test_the_keeper_stays_while_a_user_lives_and_leaves_when_the_file_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLBOX_RAM_KEEPER_IDLE", "1")
    ram, state = _ram_file(tmp_path), tmp_path / "state"
    fd, key = ramshare.open_shared(ram, state)
    os.close(fd)
    ramshare.register(state, key, ProcessIdentity.of(os.getpid()))
    keeper = _keeper(state)
    time.sleep(2.5)  # past the idle time: a live user keeps it
    assert keeper.is_alive()
    ram.unlink()  # the snapshot was deleted
    _wait_gone(keeper, 10)


def test_an_unreadable_ram_file_is_a_typed_jailer_error(tmp_path: Path) -> None:
    with pytest.raises(errors.JailerError) as caught:
        ramshare.open_shared(tmp_path / "missing", tmp_path / "state")
    assert caught.value.details.get("step") == "mount"

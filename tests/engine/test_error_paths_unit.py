"""Error classes raised through their public paths, without a guest.

Real parts throughout: a real QEMU (``-M none``, no guest) for QMP, real processes for
the shutdown ladder (one frozen in a real cgroup-v1 freezer so that even SIGKILL
cannot end it in time), real qemu-img, real SQLite, real snapshot files. The engine
tests use the fake launcher of ``fake_vmm.py`` only so that snapshots exist without a
VM; the verification that fails is the real one on real files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_vmm import FakeLauncher
from test_rollback_unit import SMALL, engine, launcher, paths

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.disks import create_overlay
from smolbox.engine.engine import Engine
from smolbox.host.accel import choose_accelerator
from smolbox.host.procs import ProcessIdentity
from smolbox.store import MachineRecord, Store
from smolbox.vmm.qmp import QMPSession
from smolbox.vmm.shutdown import LadderTimeouts, stop_process
from tests.leakguard import session_tag

__all__ = ["engine", "launcher", "paths"]  # fixtures shared with the rollback tests

FAST = LadderTimeouts(agent=0.1, powerdown=0.1, quit=2.0, sigterm=2.0, sigkill=2.0)


# --------------------------------------------------------------------------- QMP


@pytest.fixture
def bare_qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real QEMU with a QMP socket and no guest (``-M none``)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    qmp = tmp_path / "qmp.sock"
    proc = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display",
                             "none", "-S", "-qmp", f"unix:{qmp},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not qmp.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.02)
    yield proc, qmp
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_command_qemu_rejects_is_a_qmp_error(
        bare_qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, socket_path = bare_qemu
    with QMPSession(socket_path, timeout=10) as qmp:
        assert qmp.status() in ("prelaunch", "paused")
        with pytest.raises(errors.QMPError) as caught:
            qmp.command("no-such-command")
    assert caught.value.code == "QMP_ERROR"
    assert caught.value.details["command"] == "no-such-command"
    assert caught.value.details["qmp_class"] == "CommandNotFound"


def test_an_unreachable_monitor_is_a_vmm_error(tmp_path: Path) -> None:
    with pytest.raises(errors.VMMError) as caught, QMPSession(tmp_path / "none.sock", timeout=2):
        pass
    assert type(caught.value) is errors.VMMError
    assert "Cannot reach QEMU's monitor" in caught.value.message


def test_a_monitor_that_goes_away_mid_session_is_a_vmm_error(
        bare_qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, socket_path = bare_qemu
    with QMPSession(socket_path, timeout=10) as qmp:
        proc.kill()
        proc.wait()
        with pytest.raises(errors.VMMError) as caught:
            qmp.command("query-status")
    assert type(caught.value) is errors.VMMError
    assert caught.value.details["command"] == "query-status"


# --------------------------------------------------------------------------- the ladder


def _reaped(child: subprocess.Popen[bytes]) -> threading.Thread:
    """Reap ``child`` as soon as it exits (a zombie would count as stopped anyway)."""
    reaper = threading.Thread(target=child.wait, daemon=True)
    reaper.start()
    return reaper


def test_the_ladder_stops_a_qemu_with_quit(
        bare_qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, socket_path = bare_qemu
    reaper = _reaped(proc)
    step = stop_process(ProcessIdentity.of(proc.pid), socket_path, vm_id="t",
                        graceful=False, timeouts=FAST)
    assert step == "quit"
    reaper.join(10)
    assert proc.returncode == 0  # QEMU exited by itself on `quit`, no signal


def test_the_ladder_uses_sigterm_when_there_is_no_monitor(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = _reaped(child)
    try:
        step = stop_process(ProcessIdentity.of(child.pid), tmp_path / "no-qmp.sock",
                            vm_id="t", timeouts=FAST)
        assert step == "sigterm"
        reaper.join(10)
        assert child.returncode == -signal.SIGTERM
    finally:
        child.kill()
        reaper.join(10)


FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.mark.skipif(os.geteuid() != 0 or not FREEZER.is_dir(),
                    reason="needs root and the cgroup-v1 freezer")
def test_a_process_even_sigkill_cannot_end_is_a_shutdown_error(tmp_path: Path) -> None:
    """A frozen task receives SIGKILL but cannot act on it until thawed: the ladder
    runs out of steps and says so."""
    group = FREEZER / f"sbt-{session_tag() or 'x'}-{os.getpid()}"
    group.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = _reaped(child)
    try:
        (group / "cgroup.procs").write_text(str(child.pid))
        (group / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + 10
        while (group / "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < deadline, "the freezer never froze the child"
            time.sleep(0.05)
        with pytest.raises(errors.ShutdownError) as caught:
            stop_process(ProcessIdentity.of(child.pid), tmp_path / "no-qmp.sock", vm_id="t",
                         timeouts=LadderTimeouts(agent=0.1, powerdown=0.1, quit=0.1,
                                                 sigterm=0.3, sigkill=0.5))
        assert caught.value.code == "SHUTDOWN_FAILED"
        assert caught.value.details["step"] == "sigkill"
        assert caught.value.details["pid"] == child.pid
    finally:
        (group / "freezer.state").write_text("THAWED")
        child.kill()
        reaper.join(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


# --------------------------------------------------------------------------- disks, store


def test_an_overlay_over_a_missing_base_is_an_overlay_creation_error(tmp_path: Path) -> None:
    dest = tmp_path / "disk.qcow2"
    with pytest.raises(errors.OverlayCreationError) as caught:
        create_overlay(tmp_path / "no-such-base.raw", dest, base_format="raw")
    assert caught.value.code == "OVERLAY_CREATION_FAILED"
    assert caught.value.details["stderr"]
    assert not dest.exists()


def test_a_full_database_is_a_disk_space_error(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL (the page limit of this connection reached)."""
    with Store.open(tmp_path / "smolbox.db") as store:
        pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
        store._db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(errors.DiskSpaceError) as caught:
            for i in range(10_000):
                store.insert_machine(MachineRecord(id=f"m{i}", name=f"n{i}",
                                                   config={"pad": "x" * 2000},
                                                   image_ref="default"))
    assert caught.value.code == "DISK_SPACE_LOW" and caught.value.http_status == 507
    assert caught.value.details["sqlite_error"] == "SQLITE_FULL"


# --------------------------------------------------------------------------- snapshots


def _tamper_manifest(engine: Engine, name: str, change: dict[str, object]) -> None:
    """Rewrite the stored manifest of snapshot ``name`` (what a damaged store holds)."""
    db = sqlite3.connect(engine.paths.database)
    with db:
        (text,) = db.execute("SELECT manifest FROM snapshots WHERE name = ?", (name,)).fetchone()
        manifest = json.loads(text)
        manifest.update(change)
        db.execute("UPDATE snapshots SET manifest = ? WHERE name = ?",
                   (json.dumps(manifest), name))
    db.close()


@pytest.fixture
def snapshot(engine: Engine, launcher: FakeLauncher) -> Iterator[tuple[Engine, Path]]:
    engine.create(MachineConfig(name="src", **SMALL))
    made = engine.snapshot("src", "snap")
    yield engine, Path(made.path)
    for record in engine.list_machines():
        engine.delete(record.id, force=True)
    engine.delete_snapshot("snap")


def test_a_manifest_that_lists_no_ram_is_snapshot_corrupt(
        snapshot: tuple[Engine, Path]) -> None:
    engine, _ = snapshot
    record = engine.store.get_snapshot("snap")
    files = dict(record.manifest["files"])
    files.pop("ram")
    _tamper_manifest(engine, "snap", {"files": files})
    with pytest.raises(errors.SnapshotCorruptError, match="lists no 'ram'"):
        engine.fork("snap", 1)
    assert [r.name for r in engine.list_machines()] == ["src"]


def test_a_missing_snapshot_file_is_snapshot_corrupt(snapshot: tuple[Engine, Path]) -> None:
    engine, root = snapshot
    (root / "ram").unlink()
    with pytest.raises(errors.SnapshotCorruptError, match="'ram' is missing"):
        engine.fork("snap", 1)
    assert [r.name for r in engine.list_machines()] == ["src"]


def test_a_modified_snapshot_file_is_snapshot_corrupt(snapshot: tuple[Engine, Path]) -> None:
    engine, root = snapshot
    ram = root / "ram"
    data = bytearray(ram.read_bytes())
    data[0] ^= 0xFF  # same size, new content and mtime
    ram.write_bytes(bytes(data))
    with pytest.raises(errors.SnapshotCorruptError, match="does not match its SHA-256"):
        engine.fork("snap", 1)
    assert [r.name for r in engine.list_machines()] == ["src"]


def test_a_snapshot_from_the_other_accelerator_is_not_supported(
        snapshot: tuple[Engine, Path]) -> None:
    engine, _ = snapshot
    other = "kvm" if choose_accelerator().name == "tcg" else "tcg"
    _tamper_manifest(engine, "snap", {"accelerator": other})
    with pytest.raises(errors.NotSupportedError) as caught:
        engine.fork("snap", 1)
    assert caught.value.details["operation"] == "restore"
    assert [r.name for r in engine.list_machines()] == ["src"]

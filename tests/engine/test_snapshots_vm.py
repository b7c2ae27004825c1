"""Pause/resume, snapshots, restore, fork and templates on real machines (issue 5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.engine.snapshots import FILES, SnapshotFiles, sha256_of
from smolbox.engine.snapshotter import template_name
from smolbox.store import MachineRecord, SnapshotRecord
from smolbox.store.states import MachineState

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def source(engine: Engine) -> Iterator[MachineRecord]:
    record = engine.create(MachineConfig(name="snap-source"))
    yield record
    engine.delete(record.id, force=True)


@pytest.fixture(scope="module")
def snapshot(engine: Engine, source: MachineRecord) -> Iterator[SnapshotRecord]:
    """Taken with a file written and a background process running."""
    engine.exec(source.id, "echo before-snapshot > /root/marker").assert_success()
    with engine.guest(source.id, "spawn") as agent:
        agent.spawn(["sleep", "3617"])
    assert "sleep 3617" in engine.exec(source.id, "ps -eo args").stdout
    snap = engine.snapshot(source.id, "snap-main")
    yield snap
    engine.delete_snapshot(snap.name)


def digests(snap: SnapshotRecord) -> dict[str, str]:
    files = SnapshotFiles(Path(snap.path))
    return {name: sha256_of(files.root / name) for name in FILES}


def test_pause_resume_enforces_states(engine: Engine, source: MachineRecord) -> None:
    assert engine.pause(source.id).state == MachineState.PAUSED
    with pytest.raises(errors.InvalidTransitionError):
        engine.exec(source.id, "true")
    with pytest.raises(errors.InvalidTransitionError):
        engine.pause(source.id)
    assert engine.resume(source.id).state == MachineState.RUNNING
    assert engine.exec(source.id, "echo back").stdout == "back\n"
    with pytest.raises(errors.InvalidTransitionError):
        engine.resume(source.id)


def test_source_keeps_running_after_snapshot(engine: Engine, source: MachineRecord,
                                             snapshot: SnapshotRecord) -> None:
    assert engine.get(source.id).state == MachineState.RUNNING
    assert engine.exec(source.id, "cat /root/marker").stdout == "before-snapshot\n"
    listed = {s.name for s in engine.list_snapshots()}
    assert "snap-main" in listed
    assert snapshot.manifest["files"]["state"]["size"] < 1 << 20  # RAM is not in the state


def test_clones_see_file_and_process_but_not_each_others_writes(
        engine: Engine, snapshot: SnapshotRecord) -> None:
    before = digests(snapshot)
    first, second = engine.fork(snapshot.name, 2)
    try:
        for clone in (first, second):
            assert clone.source_snapshot == "snap-main"
            assert engine.exec(clone.id, "cat /root/marker").stdout == "before-snapshot\n"
            assert "sleep 3617" in engine.exec(clone.id, "ps -eo args").stdout
        engine.exec(first.id, "echo only-first > /root/own").assert_success()
        assert engine.exec(second.id, "cat /root/own").exit_code != 0
        hostnames = {engine.exec(c.id, "hostname").stdout for c in (first, second)}
        assert len(hostnames) == 2, "clones must get their own hostname"
        ids = {engine.exec(c.id, "cat /etc/machine-id").stdout for c in (first, second)}
        assert len(ids) == 2, "clones must get their own machine-id"
        randoms = {engine.exec(c.id, "head -c 16 /dev/urandom | od -An -tx1").stdout
                   for c in (first, second)}
        assert len(randoms) == 2
        guest_time = float(engine.exec(first.id, "date +%s").stdout)
        assert abs(guest_time - time.time()) < 30, "clone clock was not set from the host"
    finally:
        for clone in (first, second):
            engine.delete(clone.id, force=True)
    assert digests(snapshot) == before, "a clone modified the snapshot's files"


def test_eight_concurrent_clones_all_answer_and_files_stay_identical(
        engine: Engine, snapshot: SnapshotRecord) -> None:
    before = digests(snapshot)
    clones = engine.fork(snapshot.name, 8)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = list(pool.map(
                lambda c: engine.exec(c.id, ["sh", "-c", "echo $(hostname) ok"]).stdout, clones))
        assert all(out.endswith("ok\n") for out in outputs)
        assert len(set(outputs)) == 8
    finally:
        for clone in clones:
            engine.delete(clone.id, force=True)
    assert digests(snapshot) == before


def test_restore_puts_the_machine_back(engine: Engine) -> None:
    record = engine.create(MachineConfig())
    try:
        engine.exec(record.id, "echo v1 > /root/state").assert_success()
        engine.snapshot(record.id, "restore-point")
        engine.exec(record.id, "echo v2 > /root/state; touch /root/later").assert_success()
        restored = engine.restore(record.id, "restore-point")
        assert restored.state == MachineState.RUNNING and restored.id == record.id
        assert engine.exec(record.id, "cat /root/state").stdout == "v1\n"
        assert engine.exec(record.id, "test -e /root/later").exit_code == 1
    finally:
        engine.delete(record.id, force=True)
        engine.delete_snapshot("restore-point")


def test_snapshot_errors(engine: Engine, source: MachineRecord,
                         snapshot: SnapshotRecord) -> None:
    with pytest.raises(errors.SnapshotAlreadyExistsError):
        engine.snapshot(source.id, snapshot.name)
    with pytest.raises(errors.SnapshotNotFoundError):
        engine.fork("no-such-snapshot")
    with pytest.raises(errors.ValidationError):
        engine.snapshot(source.id, "Bad Name")


def test_mounts_cannot_be_snapshotted_and_nothing_is_touched(engine: Engine) -> None:
    # create() refuses mounts outright; a stored row with a mount proves the snapshot
    # check fires before any state or file is touched.
    config = MachineConfig(mounts=[{"host_path": "/tmp", "guest_path": "/mnt/host"}])
    engine.store.insert_machine(MachineRecord(
        id="sbx-mounted", name="sbx-mounted", config=config.model_dump(mode="json"),
        image_ref="default"))
    try:
        with pytest.raises(errors.NotSupportedError) as caught:
            engine.snapshot("sbx-mounted", "never")
        assert "virtiofs" in str(caught.value.details.get("reason"))
        assert not engine.store.list_pending_snapshots()
        assert not list(engine.paths.snapshots.glob(".tmp-*"))
    finally:
        engine.store.transition("sbx-mounted", MachineState.DELETED)
        engine.store.delete_machine("sbx-mounted")
    with pytest.raises(errors.NotSupportedError):
        engine.create(config)


def test_failed_snapshot_leaves_nothing_listed(engine: Engine, source: MachineRecord,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_normalize(*args: object, **kwargs: object) -> None:  # failure injection
        raise errors.VMMError("injected failure while writing the snapshot")

    monkeypatch.setattr(engine.snapshots, "_normalize", failing_normalize)
    with pytest.raises(errors.VMMError):
        engine.snapshot(source.id, "half-written")
    with pytest.raises(errors.SnapshotNotFoundError):
        engine.get_snapshot("half-written")
    assert not engine.store.list_pending_snapshots()
    assert not list(engine.paths.snapshots.glob(".tmp-*"))
    assert engine.exec(source.id, "echo alive").stdout == "alive\n"


def test_corrupted_snapshot_is_refused(engine: Engine, source: MachineRecord) -> None:
    snap = engine.snapshot(source.id, "to-corrupt")
    try:
        ram = SnapshotFiles(Path(snap.path)).ram
        with open(ram, "r+b") as handle:
            handle.seek(4096)
            handle.write(b"corrupted!")
        with pytest.raises(errors.SnapshotCorruptError):
            engine.fork(snap.name)
    finally:
        engine.delete_snapshot(snap.name)


def test_snapshots_survive_an_engine_restart(engine: Engine,
                                             snapshot: SnapshotRecord) -> None:
    with Engine.open() as fresh:
        assert fresh.get_snapshot(snapshot.name).id == snapshot.id
        (clone,) = fresh.fork(snapshot.name)
        try:
            assert fresh.exec(clone.id, "cat /root/marker").stdout == "before-snapshot\n"
        finally:
            fresh.delete(clone.id, force=True)


def test_create_uses_a_template_made_once(engine: Engine, default_image: object) -> None:
    first = engine.create(MachineConfig())
    second = engine.create(MachineConfig())
    try:
        assert first.source_snapshot is not None
        assert first.source_snapshot == second.source_snapshot
        assert first.source_snapshot.startswith("template-")
        template = engine.get_snapshot(first.source_snapshot)
        assert template.manifest["template"] is True
        assert engine.exec(second.id, "hostname").stdout.strip() == second.name
    finally:
        engine.delete(first.id, force=True)
        engine.delete(second.id, force=True)


def test_template_name_follows_image_version_and_shape() -> None:
    class FakeImage:  # only the two attributes template_name reads
        name = "default"

        def __init__(self, version: str) -> None:
            self.version = version

    config = MachineConfig()
    one = template_name(FakeImage("1.0"), config)  # type: ignore[arg-type]
    two = template_name(FakeImage("2.0"), config)  # type: ignore[arg-type]
    bigger = template_name(FakeImage("1.0"), MachineConfig(memory_mib=512))  # type: ignore[arg-type]
    assert len({one, two, bigger}) == 3


def test_a_snapshot_in_use_cannot_be_deleted(engine: Engine, source: MachineRecord,
                                             snapshot: SnapshotRecord) -> None:
    engine.snapshot(source.id, "parent-snap")
    (clone,) = engine.fork("parent-snap")
    try:
        with pytest.raises(errors.ConflictError) as caught:
            engine.delete_snapshot("parent-snap")
        assert clone.name in caught.value.details["machines"]
        child = engine.snapshot(clone.id, "child-snap")
        assert child.manifest["disk_parent"] == "parent-snap"
        engine.delete(clone.id, force=True)
        with pytest.raises(errors.ConflictError) as caught:
            engine.delete_snapshot("parent-snap")
        assert caught.value.details["snapshots"] == ["child-snap"]
        (grandchild,) = engine.fork("child-snap")
        assert engine.exec(grandchild.id, "cat /root/marker").stdout == "before-snapshot\n"
        engine.delete(grandchild.id, force=True)
    finally:
        for vm in engine.list_machines():
            if vm.source_snapshot in ("parent-snap", "child-snap"):
                engine.delete(vm.id, force=True)
    engine.delete_snapshot("child-snap")
    engine.delete_snapshot("parent-snap")
    with pytest.raises(errors.SnapshotNotFoundError):
        engine.get_snapshot("parent-snap")

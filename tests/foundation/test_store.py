"""The SQLite store against a real database file: records, transitions, errors."""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.store import ImageRecord, SnapshotRecord, SnapshotState, Store
from smolbox.store.db import Database
from smolbox.store.schema import LATEST_VERSION
from smolbox.store.states import MachineState as S

from .conftest import machine

NET = ipaddress.IPv4Network("10.20.0.0/29")  # guests .2-.6; .1 is the gateway


def test_open_sets_wal_foreign_keys_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "smolbox.db"
    with Store.open(path) as store:
        assert store.schema_version() == LATEST_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    db = Database.open(path)
    assert db.query("PRAGMA foreign_keys")[0][0] == 1
    assert db.query("PRAGMA busy_timeout")[0][0] == 10_000
    db.close()


def test_insert_and_get_by_id_or_name(store: Store) -> None:
    stored = store.insert_machine(machine("m1", "alpha"))
    assert stored.state is S.CREATING and stored.created_at > 0
    assert store.get_machine("m1") == stored == store.get_machine("alpha")
    assert store.find_machine("nope") is None
    with pytest.raises(errors.VMNotFoundError) as caught:
        store.get_machine("nope")
    assert caught.value.vm_id == "nope"


@pytest.mark.parametrize(("vm_id", "name"), [("m1", "other"), ("m2", "alpha"),
                                             ("alpha", "x"), ("m9", "m1")])
def test_duplicate_id_or_name_is_refused(store: Store, vm_id: str, name: str) -> None:
    store.insert_machine(machine("m1", "alpha"))
    with pytest.raises(errors.VMAlreadyExistsError):
        store.insert_machine(machine(vm_id, name))
    assert [m.id for m in store.list_machines()] == ["m1"]


def test_new_machine_must_start_creating(store: Store) -> None:
    with pytest.raises(errors.InvalidTransitionError):
        store.insert_machine(machine("m1", state=S.RUNNING))
    assert store.list_machines() == []


def test_transition_updates_state_and_fields_atomically(store: Store) -> None:
    store.insert_machine(machine("m1"))
    rec = store.transition("m1", S.RUNNING, pid=123, pid_start_time=456, accelerator="tcg",
                           config={"vcpus": 2})
    assert (rec.state, rec.pid, rec.pid_start_time, rec.accelerator, rec.config) == (
        S.RUNNING, 123, 456, "tcg", {"vcpus": 2})
    assert rec.updated_at >= rec.created_at


def test_invalid_transition_leaves_row_untouched(store: Store) -> None:
    store.insert_machine(machine("m1"))
    before = store.transition("m1", S.RUNNING)
    with pytest.raises(errors.InvalidTransitionError) as caught:
        store.transition("m1", S.DELETED, pid=99, error_reason="x")
    assert (caught.value.from_state, caught.value.to_state) == ("running", "deleted")
    assert store.get_machine("m1") == before


def test_expect_guards_against_a_state_changed_meanwhile(store: Store) -> None:
    store.insert_machine(machine("m1"))
    store.transition("m1", S.RUNNING)
    before = store.transition("m1", S.PAUSED)
    with pytest.raises(errors.InvalidTransitionError):
        store.transition("m1", S.STOPPED, expect={S.RUNNING})  # allowed edge, wrong state
    assert store.get_machine("m1") == before
    assert store.transition("m1", S.STOPPED, expect={S.PAUSED}).state is S.STOPPED


def test_update_machine_keeps_state_and_rejects_unknown_fields(store: Store) -> None:
    store.insert_machine(machine("m1"))
    rec = store.update_machine("m1", pid=7, run_dir="/r")
    assert (rec.state, rec.pid, rec.run_dir) == (S.CREATING, 7, "/r")
    for bad in ({"state": "running"}, {"name": "x"}, {"id": "y"}, {"bogus": 1}):
        with pytest.raises(errors.InternalError):
            store.update_machine("m1", **bad)
    with pytest.raises(errors.InternalError):
        store.transition("m1", S.RUNNING, created_at=1.0)
    with pytest.raises(errors.InternalError):
        store.update_machine("m1", config="not a dict")
    with pytest.raises(errors.VMNotFoundError):
        store.update_machine("ghost", pid=1)
    assert store.get_machine("m1") == rec


def test_list_machines_filters_by_state(store: Store) -> None:
    for i in range(3):
        store.insert_machine(machine(f"m{i}"))
    store.transition("m1", S.RUNNING)
    assert [m.id for m in store.list_machines()] == ["m0", "m1", "m2"]
    assert [m.id for m in store.list_machines({S.RUNNING})] == ["m1"]
    assert [m.id for m in store.list_machines([S.CREATING, S.PAUSED])] == ["m0", "m2"]
    assert store.list_machines(set()) == []


def test_delete_machine_only_when_deleted(store: Store) -> None:
    store.insert_machine(machine("m1"))
    store.allocate_lease("m1", NET)
    with pytest.raises(errors.InvalidTransitionError):
        store.delete_machine("m1")
    store.transition("m1", S.DELETED)
    store.delete_machine("m1")
    assert store.find_machine("m1") is None
    assert store.list_leases() == []
    with pytest.raises(errors.VMNotFoundError):
        store.delete_machine("m1")


def test_write_block_is_atomic_and_nests(store: Store) -> None:
    store.insert_machine(machine("m1"))
    with pytest.raises(errors.InvalidTransitionError), store.write():
        store.transition("m1", S.RUNNING)
        store.transition("m1", S.DELETED)  # invalid: the whole block rolls back
    assert store.get_machine("m1").state is S.CREATING
    with store.write():
        store.transition("m1", S.RUNNING)
        with pytest.raises(errors.InvalidTransitionError):
            store.transition("m1", S.CREATING)  # inner failure rolls back only itself
        store.transition("m1", S.STOPPED)
    assert store.get_machine("m1").state is S.STOPPED


def test_snapshot_lifecycle(store: Store) -> None:
    store.insert_machine(machine("m1"))
    snap = store.insert_snapshot(SnapshotRecord(id="s1", name="base", path="/snap/s1",
                                                created_at=0.0, vm_id="m1",
                                                state=SnapshotState.COMPLETE))
    assert snap.state is SnapshotState.PENDING
    assert store.list_snapshots() == []
    assert [s.id for s in store.list_pending_snapshots()] == ["s1"]
    with pytest.raises(errors.SnapshotNotFoundError):
        store.get_snapshot("base")
    assert store.get_snapshot("base", include_pending=True) == snap
    done = store.complete_snapshot("s1", size=4096, manifest={"ram": "abc"})
    assert (done.state, done.size, done.manifest) == (SnapshotState.COMPLETE, 4096,
                                                      {"ram": "abc"})
    with pytest.raises(errors.ConflictError):
        store.complete_snapshot("s1")
    assert store.list_snapshots() == [done] == store.list_snapshots("m1")
    assert store.list_snapshots("other") == []
    assert store.list_pending_snapshots() == []
    assert store.delete_snapshot("base") == done
    with pytest.raises(errors.SnapshotNotFoundError) as caught:
        store.delete_snapshot("base")
    assert caught.value.snapshot_id == "base"


def test_snapshot_duplicates_and_missing_machine(store: Store) -> None:
    store.insert_snapshot(SnapshotRecord(id="s1", name="base", path="/p", created_at=0.0))
    for dup in (SnapshotRecord(id="s2", name="base", path="/p", created_at=0.0),
                SnapshotRecord(id="s1", name="other", path="/p", created_at=0.0)):
        with pytest.raises(errors.SnapshotAlreadyExistsError):
            store.insert_snapshot(dup)
    with pytest.raises(errors.VMNotFoundError):
        store.insert_snapshot(SnapshotRecord(id="s3", name="x", path="/p", created_at=0.0,
                                             vm_id="ghost"))
    assert [s.id for s in store.list_pending_snapshots()] == ["s1"]


def test_snapshot_outlives_its_source_machine(store: Store) -> None:
    store.insert_machine(machine("m1"))
    store.insert_snapshot(SnapshotRecord(id="s1", name="base", path="/p", created_at=0.0,
                                         vm_id="m1"))
    store.complete_snapshot("s1")
    store.transition("m1", S.DELETED)
    store.delete_machine("m1")
    assert store.get_snapshot("s1").vm_id is None


def test_leases_lowest_free_and_exhaustion(store: Store) -> None:
    for i in range(6):
        store.insert_machine(machine(f"m{i}"))
    ips = [store.allocate_lease(f"m{i}", NET).ip for i in range(5)]
    assert ips == ["10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5", "10.20.0.6"]
    assert store.get_machine("m0").ip == "10.20.0.2"
    assert store.allocate_lease("m0", NET).ip == "10.20.0.2"  # idempotent
    with pytest.raises(errors.IPPoolExhaustedError) as caught:
        store.allocate_lease("m5", NET)
    assert caught.value.retryable
    released = store.release_lease("m2")
    assert released is not None and released.ip == "10.20.0.4"
    assert store.get_machine("m2").ip is None
    assert store.release_lease("m2") is None
    lease = store.allocate_lease("m5", NET)
    assert (lease.ip, lease.mac) == ("10.20.0.4", "52:54:00:14:00:04")
    assert store.get_lease("m5") == lease
    assert len(store.list_leases()) == 5


def test_lease_errors(store: Store) -> None:
    with pytest.raises(errors.VMNotFoundError):
        store.allocate_lease("ghost", NET)
    store.insert_machine(machine("m1"))
    store.allocate_lease("m1", NET)
    with pytest.raises(errors.ConflictError):
        store.allocate_lease("m1", ipaddress.IPv4Network("10.30.0.0/24"))
    store.release_lease("m1")
    store.transition("m1", S.DELETED)
    with pytest.raises(errors.InvalidTransitionError):
        store.allocate_lease("m1", NET)
    store.insert_machine(machine("m2"))
    with pytest.raises(errors.IPPoolExhaustedError):
        store.allocate_lease("m2", ipaddress.IPv4Network("10.40.0.0/31"))  # no room at all
    assert store.list_leases() == []
    assert store.allocate_lease("m2", ipaddress.IPv4Network("10.40.0.0/30")).ip == "10.40.0.2"


def test_images(store: Store) -> None:
    old = store.insert_image(ImageRecord("default", "1", "/img/1", "aa", 1.0))
    new = store.insert_image(ImageRecord("default", "2", "/img/2", "bb", 2.0))
    with pytest.raises(errors.ImageAlreadyExistsError):
        store.insert_image(ImageRecord("default", "2", "/x", "cc", 3.0))
    assert store.get_image("default") == new
    assert store.get_image("default", "1") == old
    assert store.list_images() == [old, new]
    store.delete_image("default", "2")
    assert store.get_image("default") == old
    with pytest.raises(errors.ImageNotFoundError):
        store.delete_image("default", "2")
    with pytest.raises(errors.ImageNotFoundError):
        store.get_image("nope")


def test_store_is_safe_across_threads(store: Store) -> None:
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(15):
                vm = f"t{t}-{i}"
                store.insert_machine(machine(vm))
                store.transition(vm, S.RUNNING)
                store.allocate_lease(vm, ipaddress.IPv4Network("10.50.0.0/24"))
                with store.write():
                    store.transition(vm, S.STOPPED)
                    store.release_lease(vm)
        except BaseException as err:  # collected and asserted below
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(store.list_machines({S.STOPPED})) == 90
    assert store.list_leases() == []


def test_upgrade_from_schema_v1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database.open(path, target_version=1)
    assert old.version() == 1
    with old.write():
        old.execute(
            "INSERT INTO machines (id, name, state, config, image_ref, created_at, updated_at)"
            " VALUES ('m1', 'legacy', 'stopped', '{\"vcpus\": 1}', 'default', 1.0, 1.0)")
    columns = {row["name"] for row in old.query("PRAGMA table_info(machines)")}
    assert "ip" not in columns
    old.close()
    with Store.open(path) as store:
        assert store.schema_version() == LATEST_VERSION
        rec = store.get_machine("legacy")
        assert (rec.state, rec.ip, rec.source_snapshot, rec.config) == (
            S.STOPPED, None, None, {"vcpus": 1})
        assert store.update_machine("m1", ip="10.0.0.2", source_snapshot="s1").ip == "10.0.0.2"
    with Store.open(path) as again:  # reopening does not re-run migrations
        assert again.schema_version() == LATEST_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(errors.HostError) as caught:
        Store.open(path)
    assert caught.value.details["version"] == 99


def test_damaged_database_is_state_poisoned(tmp_path: Path) -> None:
    path = tmp_path / "smolbox.db"
    path.write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(errors.StatePoisonedError) as caught:
        Store.open(path)
    assert str(path) in caught.value.help
    assert caught.value.details["sqlite_error"] == "SQLITE_NOTADB"


def test_unusable_location_is_a_host_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(errors.HostError):
        Store.open(blocker / "sub" / "smolbox.db")
    (tmp_path / "isdir.db").mkdir()
    with pytest.raises(errors.HostError) as caught:
        Store.open(tmp_path / "isdir.db")
    assert caught.value.code == "HOST_ERROR"


def test_corrupt_stored_json_is_state_poisoned(store: Store) -> None:
    store.insert_machine(machine("m1"))
    raw = sqlite3.connect(store.path)
    raw.execute("UPDATE machines SET config = '{broken' WHERE id = 'm1'")
    raw.commit()
    raw.close()
    with pytest.raises(errors.StatePoisonedError) as caught:
        store.get_machine("m1")
    assert caught.value.vm_id == "m1"


def test_closed_store_raises_catalogue_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(errors.InternalError):
        store.list_machines()


def test_rename_machine_keeps_names_unique(store: Store) -> None:
    store.insert_machine(machine("m1", "alpha"))
    store.insert_machine(machine("m2", "beta"))
    renamed = store.rename_machine("m1", "gamma")
    assert renamed.name == "gamma" and store.get_machine("gamma").id == "m1"
    for taken in ("beta", "m2"):
        with pytest.raises(errors.VMAlreadyExistsError):
            store.rename_machine("m1", taken)
    assert store.get_machine("m1").name == "gamma"
    assert store.rename_machine("m1", "gamma").name == "gamma"

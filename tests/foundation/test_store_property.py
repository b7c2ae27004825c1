"""Random operation sequences against a real store never leave an impossible state.

A hypothesis RuleBasedStateMachine keeps a simple model of what the store should
hold and, after every step, checks the database itself: no lease without a
machine, unique names, only states reachable through the table, leases only on
guest addresses, snapshots listed only when complete, and rows untouched by
refused operations.
"""

from __future__ import annotations

import ipaddress
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from smolbox import errors
from smolbox.store import MachineRecord, SnapshotRecord, Store
from smolbox.store.states import TRANSITIONS, MachineState, reachable_states

NET = ipaddress.IPv4Network("10.9.0.0/29")  # 5 guest addresses: .2-.6
IDS = st.sampled_from(["m1", "m2", "m3", "m4", "m5", "m6", "m7"])
NAMES = st.sampled_from(["a", "b", "c", "d", "m1", "m2"])  # some collide with ids
SNAPS = st.sampled_from(["s1", "s2", "s3"])
STATES = st.sampled_from(list(MachineState))


@dataclass
class SnapModel:
    vm_id: str | None
    complete: bool


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="sbx-prop-"))
        self.store = Store.open(self.dir / "smolbox.db")
        self.machines: dict[str, tuple[str, MachineState]] = {}  # id -> (name, state)
        self.leases: dict[str, str] = {}  # vm_id -> ip
        self.snaps: dict[str, SnapModel] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _resolve(self, key: str) -> str:
        """Like the store: an id, else the id of the machine with that name."""
        if key in self.machines:
            return key
        return next((vm for vm, (name, _) in self.machines.items() if name == key), key)

    def _taken(self) -> set[str]:
        return set(self.machines) | {name for name, _ in self.machines.values()}

    @rule(vm_id=IDS, name=NAMES)
    def create(self, vm_id: str, name: str) -> None:
        rec = MachineRecord(id=vm_id, name=name, config={"n": 1}, image_ref="default")
        if vm_id in self._taken() or name in self._taken():
            before = self.store.list_machines()
            try:
                self.store.insert_machine(rec)
            except errors.VMAlreadyExistsError:
                assert self.store.list_machines() == before
                return
            raise AssertionError("duplicate id or name accepted")
        self.store.insert_machine(rec)
        self.machines[vm_id] = (name, MachineState.CREATING)

    @rule(vm_id=IDS, to=STATES, pid=st.integers(1, 10**6))
    def transition(self, vm_id: str, to: MachineState, pid: int) -> None:
        target = to
        vm_id = self._resolve(vm_id)
        if vm_id not in self.machines:
            try:
                self.store.transition(vm_id, target)
            except errors.VMNotFoundError:
                return
            raise AssertionError("transition of a missing machine accepted")
        name, state = self.machines[vm_id]
        before = self.store.get_machine(vm_id)
        if target in TRANSITIONS[state]:
            after = self.store.transition(vm_id, target, pid=pid)
            assert (after.state, after.pid) == (target, pid)
            self.machines[vm_id] = (name, target)
        else:
            try:
                self.store.transition(vm_id, target, pid=pid)
            except errors.InvalidTransitionError as err:
                assert (err.from_state, err.to_state) == (state.value, target.value)
                assert self.store.get_machine(vm_id) == before
                return
            raise AssertionError(f"{state} -> {target} accepted")

    @rule(vm_id=IDS)
    def delete(self, vm_id: str) -> None:
        vm_id = self._resolve(vm_id)
        if vm_id not in self.machines:
            return
        state = self.machines[vm_id][1]
        if state is not MachineState.DELETED:
            before = self.store.get_machine(vm_id)
            try:
                self.store.delete_machine(vm_id)
            except errors.InvalidTransitionError:
                assert self.store.get_machine(vm_id) == before
                return
            raise AssertionError("delete of a live machine accepted")
        self.store.delete_machine(vm_id)
        del self.machines[vm_id]
        self.leases.pop(vm_id, None)
        for snap in self.snaps.values():
            if snap.vm_id == vm_id:
                snap.vm_id = None

    @rule(vm_id=IDS)
    def lease(self, vm_id: str) -> None:
        vm_id = self._resolve(vm_id)
        if vm_id not in self.machines:
            try:
                self.store.allocate_lease(vm_id, NET)
            except errors.VMNotFoundError:
                return
            raise AssertionError("lease for a missing machine")
        state = self.machines[vm_id][1]
        try:
            got = self.store.allocate_lease(vm_id, NET)
        except errors.InvalidTransitionError:
            assert state is MachineState.DELETED
            return
        except errors.IPPoolExhaustedError:
            assert vm_id not in self.leases and len(self.leases) == 5
            return
        assert state is not MachineState.DELETED
        if vm_id in self.leases:
            assert got.ip == self.leases[vm_id]
        else:
            free = [str(ip) for ip in list(NET.hosts())[1:] if str(ip) not in
                    self.leases.values()]
            assert got.ip == free[0]
            self.leases[vm_id] = got.ip

    @rule(vm_id=IDS)
    def release(self, vm_id: str) -> None:
        vm_id = self._resolve(vm_id)
        vm_id = self._resolve(vm_id)
        released = self.store.release_lease(vm_id)
        expected = self.leases.pop(vm_id, None)
        assert (released.ip if released else None) == expected

    @rule(snap=SNAPS, vm_id=st.one_of(st.none(), IDS))
    def snapshot(self, snap: str, vm_id: str | None) -> None:
        vm_id = None if vm_id is None else self._resolve(vm_id)
        rec = SnapshotRecord(id=f"id-{snap}", name=snap, path=f"/s/{snap}", created_at=0.0,
                             vm_id=vm_id)
        try:
            self.store.insert_snapshot(rec)
        except errors.SnapshotAlreadyExistsError:
            assert snap in self.snaps
            return
        except errors.VMNotFoundError:
            assert vm_id is not None and vm_id not in self.machines
            return
        assert snap not in self.snaps and (vm_id is None or vm_id in self.machines)
        self.snaps[snap] = SnapModel(vm_id, complete=False)

    @rule(snap=SNAPS)
    def complete(self, snap: str) -> None:
        try:
            self.store.complete_snapshot(snap)
        except errors.SnapshotNotFoundError:
            assert snap not in self.snaps
            return
        except errors.ConflictError:
            assert self.snaps[snap].complete
            return
        assert not self.snaps[snap].complete
        self.snaps[snap].complete = True

    @rule(snap=SNAPS)
    def delete_snapshot(self, snap: str) -> None:
        try:
            self.store.delete_snapshot(snap)
        except errors.SnapshotNotFoundError:
            assert snap not in self.snaps
            return
        del self.snaps[snap]

    @invariant()
    def database_matches_model_and_is_possible(self) -> None:
        rows = {m.id: m for m in self.store.list_machines()}
        assert {k: (m.name, m.state) for k, m in rows.items()} == self.machines
        reachable = reachable_states()
        assert all(m.state in reachable for m in rows.values())
        names = [m.name for m in rows.values()]
        assert len(names) == len(set(names))
        assert not (set(names) & set(rows)) or all(
            rows[n].name == n for n in set(names) & set(rows))
        leases = {lease.vm_id: lease.ip for lease in self.store.list_leases()}
        assert leases == self.leases
        assert set(leases) <= set(rows)
        guest_ips = {str(ip) for ip in list(NET.hosts())[1:]}
        assert set(leases.values()) <= guest_ips
        assert len(set(leases.values())) == len(leases)
        for vm_id, machine in rows.items():
            assert machine.ip == leases.get(vm_id)
        assert {s.name for s in self.store.list_snapshots()} == {
            k for k, v in self.snaps.items() if v.complete}
        assert {s.name for s in self.store.list_pending_snapshots()} == {
            k for k, v in self.snaps.items() if not v.complete}
        for snap in self.store.list_snapshots() + self.store.list_pending_snapshots():
            assert snap.vm_id == self.snaps[snap.name].vm_id
        raw = sqlite3.connect(self.store.path)
        try:
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            raw.close()


StoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreStateMachine = StoreMachine.TestCase

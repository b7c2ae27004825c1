"""The store the engine calls: machines, snapshots, images and network leases.

Why the state check lives here: the store is the source of truth shared by every
smolbox process. :meth:`Store.transition` reads the row's *current* state inside
a ``BEGIN IMMEDIATE`` transaction and consults :mod:`smolbox.store.states`
before writing, so a transition decided on a stale read in one process can never
overwrite a newer state written by another. An invalid transition leaves the row
untouched.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from smolbox import errors
from smolbox.store import leases as lease_pool
from smolbox.store import reserve
from smolbox.store.db import DEFAULT_BUSY_TIMEOUT_S, Database
from smolbox.store.records import (
    MACHINE_FIELDS,
    DeclarationRecord,
    ImageRecord,
    Lease,
    MachineRecord,
    SnapshotRecord,
    SnapshotState,
    declaration_from_row,
    dump_json,
    image_from_row,
    lease_from_row,
    machine_from_row,
    snapshot_from_row,
)
from smolbox.store.states import MachineState, check_transition, require_state

__all__ = ["Store"]

T = TypeVar("T")
S = TypeVar("S", bound=type)

_MACHINE_COLUMNS = (
    "id", "name", "state", "config", "image_ref", "image_version", "accelerator", "pid",
    "pid_start_time", "run_dir", "created_at", "updated_at", "error_reason",
    "source_snapshot", "ip", "owner", "operation", "expires_at",
)


def _retry_on_full_disk(method: Callable[..., T]) -> Callable[..., T]:
    """Run a store method again, once, with the disk reserve borrowed, when it failed
    because the disk is full: so ``rm`` can record a delete on a full disk. Only an
    outermost call retries (a nested one is part of its caller's transaction)."""
    @functools.wraps(method)
    def call(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except errors.DiskSpaceError:
            if self._db.in_transaction or not reserve.release(self._db.path.parent):
                raise
        try:
            return method(self, *args, **kwargs)
        finally:
            reserve.give_back(self._db.path.parent)
    return call


def _retrying(cls: S) -> S:
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member) and name not in (
                "open", "close", "write"):
            setattr(cls, name, _retry_on_full_disk(member))
    return cls


@_retrying
class Store:
    """SQLite-backed records of everything smolbox created on this host.

    Safe to share between the threads of one process; every process opens its
    own ``Store`` on the same file and SQLite's locks serialise the writers. A method
    that fails on a full disk is retried once on the disk reserve (store/reserve.py).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def open(cls, path: Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Store:
        """Open or create the store at ``path`` and bring its schema up to date."""
        return cls(Database.open(path, busy_timeout_s=busy_timeout_s))

    @property
    def path(self) -> Path:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[Store]:
        """Group several store calls into one atomic transaction (nesting allowed).

        Holds the cross-process write lock for the whole block: keep it short and
        never wait on a VM inside it.
        """
        with self._db.write("transaction"):
            yield self

    def schema_version(self) -> int:
        return self._db.version()

    # ================================================================ machines

    def insert_machine(self, rec: MachineRecord) -> MachineRecord:
        """Record a new machine (always in ``creating``); the store stamps the times."""
        if rec.state is not MachineState.CREATING:
            raise errors.InvalidTransitionError(
                rec.id, "new", rec.state.value,
                message=f"A new machine starts in 'creating', not '{rec.state.value}'",
            )
        now = time.time()
        stored = replace(rec, created_at=now, updated_at=now)
        with self._db.write("insert machine"):
            clash = self._db.query(
                "SELECT id FROM machines WHERE id IN (?, ?) OR name IN (?, ?)",
                (rec.id, rec.name, rec.id, rec.name), operation="insert machine",
            )
            if clash:
                taken = rec.name if any(r["id"] != rec.id for r in clash) else rec.id
                raise errors.VMAlreadyExistsError(taken)
            values = [_column_value(col, getattr(stored, col)) for col in _MACHINE_COLUMNS]
            self._db.execute(
                f"INSERT INTO machines ({', '.join(_MACHINE_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _MACHINE_COLUMNS)})",
                values, operation="insert machine",
            )
        return stored

    def find_machine(self, id_or_name: str) -> MachineRecord | None:
        """The machine with this id (preferred) or name, or None."""
        rows = self._db.query(
            "SELECT * FROM machines WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
            (id_or_name, id_or_name, id_or_name), operation="get machine",
        )
        return machine_from_row(rows[0]) if rows else None

    def get_machine(self, id_or_name: str) -> MachineRecord:
        """Like :meth:`find_machine` but raises VMNotFoundError."""
        found = self.find_machine(id_or_name)
        if found is None:
            raise errors.VMNotFoundError(id_or_name)
        return found

    def list_machines(self, states: Iterable[MachineState] | None = None
                      ) -> list[MachineRecord]:
        """Machines in creation order; all of them (including ``deleted``) when no filter."""
        if states is None:
            rows = self._db.query("SELECT * FROM machines ORDER BY created_at, id")
        else:
            wanted = [MachineState(s).value for s in states]
            if not wanted:
                return []
            rows = self._db.query(
                f"SELECT * FROM machines WHERE state IN ({', '.join('?' for _ in wanted)}) "
                "ORDER BY created_at, id", wanted,
            )
        return [machine_from_row(row) for row in rows]

    def transition(self, vm_id: str, to_state: MachineState, *,
                   expect: set[MachineState] | None = None, **fields: Any) -> MachineRecord:
        """Move a machine to ``to_state`` and set ``fields`` in one atomic step.

        ``expect`` narrows the table further (e.g. "stop only if still running"):
        a current state outside it raises InvalidTransitionError too. Nothing is
        written unless the whole check passes.
        """
        updates = _checked_fields(fields)
        with self._db.write("transition"):
            current = self.get_machine(vm_id)
            if expect is not None and current.state not in expect:
                raise errors.InvalidTransitionError(
                    current.name, current.state.value, MachineState(to_state).value,
                    message=(f"Machine '{current.name}' is {current.state.value}, expected "
                             f"{' or '.join(sorted(s.value for s in expect)) or 'nothing'}"),
                    details={"id": current.id},
                )
            target = check_transition(current.name, current.state, to_state,
                                      machine_id=current.id)
            return self._update(current, {**updates, "state": target.value})

    def update_machine(self, vm_id: str, **fields: Any) -> MachineRecord:
        """Set fields without changing state (pid after spawn, ip, accelerator…)."""
        updates = _checked_fields(fields)
        with self._db.write("update machine"):
            return self._update(self.get_machine(vm_id), updates)

    def rename_machine(self, vm_id: str, name: str) -> MachineRecord:
        """Give a machine a new name (warm-pool hand-out); names stay unique."""
        with self._db.write("rename machine"):
            current = self.get_machine(vm_id)
            taken = self._db.query(
                "SELECT id FROM machines WHERE (id = ? OR name = ?) AND id != ?",
                (name, name, current.id), operation="rename machine",
            )
            if taken:
                raise errors.VMAlreadyExistsError(name)
            self._db.execute("UPDATE machines SET name = ?, updated_at = ? WHERE id = ?",
                             (name, time.time(), current.id), operation="rename machine")
            return self.get_machine(current.id)

    def delete_machine(self, vm_id: str) -> None:
        """Remove a ``deleted`` machine's row and its lease; its snapshots stay."""
        with self._db.write("delete machine"):
            current = self.get_machine(vm_id)
            require_state(current.id, current.state, {MachineState.DELETED}, "purge")
            self._db.execute("DELETE FROM network_leases WHERE vm_id = ?", (current.id,))
            self._db.execute("DELETE FROM machines WHERE id = ?", (current.id,))

    def _update(self, current: MachineRecord, updates: dict[str, Any]) -> MachineRecord:
        updates = {**updates, "updated_at": max(time.time(), current.updated_at)}
        assignments = ", ".join(f"{col} = ?" for col in updates)
        self._db.execute(
            f"UPDATE machines SET {assignments} WHERE id = ?",
            [*(_column_value(col, val) for col, val in updates.items()), current.id],
            operation="update machine",
        )
        return self.get_machine(current.id)

    # =============================================================== snapshots

    def insert_snapshot(self, rec: SnapshotRecord) -> SnapshotRecord:
        """Record a snapshot whose files are being written; it stays hidden until complete."""
        stored = replace(rec, state=SnapshotState.PENDING, created_at=time.time())
        with self._db.write("insert snapshot"):
            if self._db.query(
                "SELECT id FROM snapshots WHERE id IN (?, ?) OR name IN (?, ?)",
                (rec.id, rec.name, rec.id, rec.name), operation="insert snapshot",
            ):
                raise errors.SnapshotAlreadyExistsError(rec.vm_id, rec.name)
            if rec.vm_id is not None:  # a name is accepted; the row keeps the id
                stored = replace(stored, vm_id=self.get_machine(rec.vm_id).id)
            self._db.execute(
                "INSERT INTO snapshots (id, name, vm_id, path, state, created_at, size, "
                "manifest, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (stored.id, stored.name, stored.vm_id, stored.path, stored.state.value,
                 stored.created_at, stored.size, dump_json(stored.manifest), stored.owner),
                operation="insert snapshot",
            )
        return stored

    def complete_snapshot(self, snapshot_id: str, *, size: int | None = None,
                          manifest: dict[str, Any] | None = None) -> SnapshotRecord:
        """Mark a pending snapshot complete once all its files are on disk."""
        with self._db.write("complete snapshot"):
            current = self.get_snapshot(snapshot_id, include_pending=True)
            if current.state is SnapshotState.COMPLETE:
                raise errors.ConflictError(
                    f"Snapshot '{current.name}' is already complete",
                    details={"snapshot_id": current.id},
                )
            self._db.execute(
                "UPDATE snapshots SET state = ?, size = COALESCE(?, size), "
                "manifest = COALESCE(?, manifest), owner = NULL WHERE id = ?",
                (SnapshotState.COMPLETE.value, size,
                 None if manifest is None else dump_json(manifest), current.id),
                operation="complete snapshot",
            )
            return self.get_snapshot(current.id)

    def get_snapshot(self, id_or_name: str, *, include_pending: bool = False
                     ) -> SnapshotRecord:
        """A complete snapshot by id or name (pending ones only when asked)."""
        rows = self._db.query(
            "SELECT * FROM snapshots WHERE (id = ? OR name = ?) AND state IN (?, ?) "
            "ORDER BY id = ? DESC LIMIT 1",
            (id_or_name, id_or_name, SnapshotState.COMPLETE.value,
             SnapshotState.PENDING.value if include_pending else SnapshotState.COMPLETE.value,
             id_or_name),
            operation="get snapshot",
        )
        if not rows:
            raise errors.SnapshotNotFoundError(None, id_or_name)
        return snapshot_from_row(rows[0])

    def list_snapshots(self, vm_id: str | None = None) -> list[SnapshotRecord]:
        """Complete snapshots, oldest first, optionally only those of one machine."""
        sql = "SELECT * FROM snapshots WHERE state = ?"
        params: list[Any] = [SnapshotState.COMPLETE.value]
        if vm_id is not None:
            owner = self.find_machine(vm_id)
            sql += " AND vm_id = ?"
            params.append(owner.id if owner else vm_id)
        rows = self._db.query(sql + " ORDER BY created_at, id", params)
        return [snapshot_from_row(row) for row in rows]

    def list_pending_snapshots(self) -> list[SnapshotRecord]:
        """Snapshots whose writing never finished (left by a crash): for cleanup."""
        rows = self._db.query("SELECT * FROM snapshots WHERE state = ? ORDER BY created_at, id",
                              (SnapshotState.PENDING.value,))
        return [snapshot_from_row(row) for row in rows]

    def delete_snapshot(self, id_or_name: str) -> SnapshotRecord:
        """Remove a snapshot's row (pending or complete); returns it so files can go too."""
        with self._db.write("delete snapshot"):
            current = self.get_snapshot(id_or_name, include_pending=True)
            self._db.execute("DELETE FROM snapshots WHERE id = ?", (current.id,))
        return current

    # ================================================================== images

    def insert_image(self, rec: ImageRecord) -> ImageRecord:
        with self._db.write("insert image"):
            if self._db.query("SELECT 1 FROM images WHERE name = ? AND version = ?",
                              (rec.name, rec.version)):
                raise errors.ImageAlreadyExistsError(
                    f"Image {rec.name}:{rec.version} is already installed",
                    image=f"{rec.name}:{rec.version}",
                )
            self._db.execute(
                "INSERT INTO images (name, version, path, manifest_sha, installed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (rec.name, rec.version, rec.path, rec.manifest_sha, rec.installed_at),
            )
        return rec

    def get_image(self, name: str, version: str | None = None) -> ImageRecord:
        """An installed image; without a version, the most recently installed one."""
        if version is None:
            rows = self._db.query(
                "SELECT * FROM images WHERE name = ? ORDER BY installed_at DESC, version DESC "
                "LIMIT 1", (name,))
        else:
            rows = self._db.query("SELECT * FROM images WHERE name = ? AND version = ?",
                                  (name, version))
        if not rows:
            ref = name if version is None else f"{name}:{version}"
            raise errors.ImageNotFoundError(f"Image {ref} is not installed", image=ref)
        return image_from_row(rows[0])

    def list_images(self) -> list[ImageRecord]:
        rows = self._db.query("SELECT * FROM images ORDER BY name, installed_at, version")
        return [image_from_row(row) for row in rows]

    def delete_image(self, name: str, version: str) -> None:
        with self._db.write("delete image"):
            if not self._db.execute("DELETE FROM images WHERE name = ? AND version = ?",
                                    (name, version)):
                raise errors.ImageNotFoundError(f"Image {name}:{version} is not installed",
                                                image=f"{name}:{version}")

    # ============================================================ declarations
    # Rows go with their machine (ON DELETE CASCADE), so a deleted machine leaves none.

    def put_declaration(self, rec: DeclarationRecord) -> DeclarationRecord:
        """Record (or replace) what a VMFile declared for a machine and what ran in it."""
        stored = replace(rec, updated_at=time.time())
        with self._db.write("record declaration"):
            self._db.execute(
                "INSERT OR REPLACE INTO declarations (vm_id, source, name, declaration_sha, "
                "provisioned, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (stored.vm_id, stored.source, stored.name, stored.declaration_sha,
                 json.dumps(list(stored.provisioned)), stored.updated_at),
                operation="record declaration")
        return stored

    def get_declaration(self, vm_id: str) -> DeclarationRecord | None:
        rows = self._db.query("SELECT * FROM declarations WHERE vm_id = ?", (vm_id,),
                              operation="get declaration")
        return declaration_from_row(rows[0]) if rows else None

    def list_declarations(self, source: str | None = None) -> list[DeclarationRecord]:
        """Declarations of one VMFile (its absolute path), or of all of them."""
        if source is None:
            rows = self._db.query("SELECT * FROM declarations ORDER BY source, name")
        else:
            rows = self._db.query("SELECT * FROM declarations WHERE source = ? ORDER BY name",
                                  (source,), operation="list declarations")
        return [declaration_from_row(row) for row in rows]

    # ================================================================== leases

    def allocate_lease(self, vm_id: str, network: ipaddress.IPv4Network) -> Lease:
        """Lease the lowest free guest address of ``network`` to a machine.

        Idempotent: a machine that already holds an address in ``network`` gets it
        back. A machine holds at most one lease; its row's ``ip`` follows the lease.
        """
        with self._db.write("allocate lease"):
            machine = self.get_machine(vm_id)
            require_state(machine.id, machine.state,
                          set(MachineState) - {MachineState.DELETED}, "lease an address")
            held = self._db.query("SELECT * FROM network_leases WHERE vm_id = ?", (machine.id,))
            if held:
                lease = lease_from_row(held[0])
                if ipaddress.IPv4Address(lease.ip) in network:
                    return lease
                raise errors.ConflictError(
                    f"Machine '{machine.id}' already holds {lease.ip}, outside {network}",
                    details={"vm_id": machine.id, "ip": lease.ip, "network": str(network)},
                    help="Release the machine's lease before leasing from another network.",
                )
            taken = [row["ip"] for row in self._db.query("SELECT ip FROM network_leases")]
            address = lease_pool.lowest_free(network, taken)
            if address is None:
                raise errors.IPPoolExhaustedError(
                    f"No free guest address left in {network}",
                    details={"network": str(network), "leased": len(taken)},
                )
            lease = Lease(ip=str(address), vm_id=machine.id, mac=lease_pool.mac_for(address),
                          created_at=time.time())
            self._db.execute(
                "INSERT INTO network_leases (ip, vm_id, mac, created_at) VALUES (?, ?, ?, ?)",
                (lease.ip, lease.vm_id, lease.mac, lease.created_at),
                operation="allocate lease",
            )
            self._update(machine, {"ip": lease.ip})
            return lease

    def release_lease(self, vm_id: str) -> Lease | None:
        """Give back a machine's address; returns the released lease (None if it had none)."""
        with self._db.write("release lease"):
            lease = self.get_lease(vm_id)
            if lease is None:
                return None
            self._db.execute("DELETE FROM network_leases WHERE vm_id = ?", (lease.vm_id,))
            self._db.execute("UPDATE machines SET ip = NULL WHERE id = ? AND ip = ?",
                             (lease.vm_id, lease.ip), operation="release lease")
            return lease

    def get_lease(self, vm_id: str) -> Lease | None:
        """The lease of a machine (by id or name), or None."""
        found = self.find_machine(vm_id)
        if found is None:
            return None
        rows = self._db.query("SELECT * FROM network_leases WHERE vm_id = ?", (found.id,))
        return lease_from_row(rows[0]) if rows else None

    def list_leases(self) -> list[Lease]:
        rows = self._db.query("SELECT * FROM network_leases ORDER BY created_at, ip")
        return [lease_from_row(row) for row in rows]


def _checked_fields(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - MACHINE_FIELDS)
    if unknown:
        raise errors.InternalError(
            f"Cannot set machine field(s) {', '.join(unknown)} here",
            details={"fields": unknown, "allowed": sorted(MACHINE_FIELDS)},
            help="This is a smolbox bug: state changes go through Store.transition(); "
                 "id, name and timestamps are fixed.",
        )
    return dict(fields)


def _column_value(column: str, value: Any) -> Any:
    if column == "config":
        if not isinstance(value, dict):
            raise errors.InternalError(
                "Machine config must be stored as a JSON object (use model_dump(mode='json'))",
                details={"type": type(value).__name__},
            )
        return dump_json(value)
    if column == "state":
        return MachineState(value).value
    return value

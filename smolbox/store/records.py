"""Typed, immutable records the store hands out.

Why frozen dataclasses rather than rows or dicts: callers in other processes and
threads must not mutate what they read and assume it was saved; the only way to
change the store is through :class:`smolbox.store.Store` methods, which check
state transitions.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from smolbox import errors
from smolbox.store.states import MachineState


class SnapshotState(StrEnum):
    """A snapshot is ``pending`` while its files are written, ``complete`` after."""

    PENDING = "pending"
    COMPLETE = "complete"


@dataclass(frozen=True)
class MachineRecord:
    """One machine row. ``config`` is the MachineConfig as JSON-ready data.

    The timestamps of a record passed to ``insert_machine`` are ignored: the store
    stamps rows itself so times come from one clock.
    """

    id: str
    name: str
    config: dict[str, Any]
    image_ref: str
    state: MachineState = MachineState.CREATING
    created_at: float = 0.0
    updated_at: float = 0.0
    image_version: str | None = None
    accelerator: str | None = None
    pid: int | None = None
    pid_start_time: int | None = None
    run_dir: str | None = None
    error_reason: str | None = None
    source_snapshot: str | None = None
    ip: str | None = None
    #: While a multi-step operation (create, fork, restore, delete) works on the row:
    #: the owning process as ``"<pid>-<start time>"`` and the operation's name; both
    #: None at rest. Reconcile finishes or undoes operations whose owner is dead.
    owner: str | None = None
    operation: str | None = None
    #: Lifetime: epoch seconds after which the machine is deleted (or paused, as its
    #: config's ``on_timeout`` says); None: it lives until deleted.
    expires_at: float | None = None


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot row; ``vm_id`` becomes None when the source machine is removed."""

    id: str
    name: str
    path: str
    created_at: float
    vm_id: str | None = None
    state: SnapshotState = SnapshotState.PENDING
    size: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    #: The process writing a pending snapshot (``"<pid>-<start time>"``).
    owner: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    """An installed image: where it lives and the SHA-256 of its manifest."""

    name: str
    version: str
    path: str
    manifest_sha: str
    installed_at: float


@dataclass(frozen=True)
class DeclarationRecord:
    """A machine made from a VMFile: which file and name declared it, the digest of that
    declaration, and the chained input digests of the provisioning steps that ran."""

    vm_id: str
    source: str
    name: str
    declaration_sha: str
    provisioned: tuple[str, ...] = ()
    updated_at: float = 0.0


@dataclass(frozen=True)
class Lease:
    """A guest IPv4 address (and MAC) held by one machine."""

    ip: str
    vm_id: str
    mac: str
    created_at: float


#: Columns of ``machines`` a caller may set (not id, name, state or timestamps).
MACHINE_FIELDS: frozenset[str] = frozenset({
    "config", "image_ref", "image_version", "accelerator", "pid", "pid_start_time",
    "run_dir", "error_reason", "source_snapshot", "ip", "owner", "operation",
    "expires_at",
})


def _json(text: str, owner: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise errors.StatePoisonedError(owner, f"stored JSON is unreadable: {err}") from None
    if not isinstance(value, dict):
        raise errors.StatePoisonedError(owner, "stored JSON is not an object")
    return value


def dump_json(value: dict[str, Any]) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise errors.ValidationError(
            f"Value cannot be stored as JSON: {err}", field="config",
        ) from None


def machine_from_row(row: sqlite3.Row) -> MachineRecord:
    return MachineRecord(
        id=row["id"], name=row["name"], state=MachineState(row["state"]),
        config=_json(row["config"], row["id"]), image_ref=row["image_ref"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        image_version=row["image_version"], accelerator=row["accelerator"], pid=row["pid"],
        pid_start_time=row["pid_start_time"], run_dir=row["run_dir"],
        error_reason=row["error_reason"], source_snapshot=row["source_snapshot"], ip=row["ip"],
        owner=row["owner"], operation=row["operation"], expires_at=row["expires_at"],
    )


def snapshot_from_row(row: sqlite3.Row) -> SnapshotRecord:
    return SnapshotRecord(
        id=row["id"], name=row["name"], path=row["path"], created_at=row["created_at"],
        vm_id=row["vm_id"], state=SnapshotState(row["state"]), size=row["size"],
        manifest=_json(row["manifest"], row["vm_id"] or row["id"]), owner=row["owner"],
    )


def image_from_row(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(name=row["name"], version=row["version"], path=row["path"],
                       manifest_sha=row["manifest_sha"], installed_at=row["installed_at"])


def declaration_from_row(row: sqlite3.Row) -> DeclarationRecord:
    return DeclarationRecord(vm_id=row["vm_id"], source=row["source"], name=row["name"],
                             declaration_sha=row["declaration_sha"],
                             provisioned=tuple(json.loads(row["provisioned"])),
                             updated_at=row["updated_at"])


def lease_from_row(row: sqlite3.Row) -> Lease:
    return Lease(ip=row["ip"], vm_id=row["vm_id"], mac=row["mac"],
                 created_at=row["created_at"])

"""Fixtures for the foundation tests: a real SQLite store in a temporary directory."""

from __future__ import annotations

from smolbox.store import MachineRecord


def machine(vm_id: str, name: str | None = None, **kw: object) -> MachineRecord:
    """A minimal new machine record."""
    fields: dict[str, object] = {"config": {"vcpus": 1}, "image_ref": "default", **kw}
    return MachineRecord(id=vm_id, name=name or f"name-{vm_id}", **fields)  # type: ignore[arg-type]

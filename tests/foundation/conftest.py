"""Fixtures for the foundation tests: a real SQLite store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.store import MachineRecord, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state" / "smolbox.db")
    try:
        yield opened
    finally:
        opened.close()


def machine(vm_id: str, name: str | None = None, **kw: object) -> MachineRecord:
    """A minimal new machine record."""
    fields: dict[str, object] = {"config": {"vcpus": 1}, "image_ref": "default", **kw}
    return MachineRecord(id=vm_id, name=name or f"name-{vm_id}", **fields)  # type: ignore[arg-type]

"""A recording SDK backend and engine for unit tests: no QEMU, no server.

``RecordingBackend`` stands in for :class:`smolbox.sdk.backend.Backend` and keeps
every call (name, arguments) so a test can assert what the SDK handed down, e.g.
that ``create`` got the very ``MachineConfig`` object that was validated.
``RecordingEngine`` stands in for :class:`smolbox.engine.engine.Engine` under a
real ``LocalBackend`` (and so under a real server app). Operations a test does
not use raise ``NotSupportedError``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.sdk.models import MachineInfo
from smolbox.store.records import MachineRecord
from smolbox.store.states import MachineState


def record_for(config: MachineConfig, vm_id: str = "sbx-fake0001") -> MachineRecord:
    return MachineRecord(id=vm_id, name=config.name or vm_id,
                         config=config.model_dump(mode="json"), image_ref=config.image,
                         state=MachineState.RUNNING, created_at=time.time(),
                         updated_at=time.time())


class RecordingBackend:
    """Records calls; ``create`` and ``get`` answer, ``delay`` makes calls slow."""

    name = "recording"

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.delay = delay
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def _record(self, op: str, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append((op, args, kwargs))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            with self._lock:
                self.running -= 1

    def configs(self) -> list[Any]:
        """The ``config`` argument of every ``create`` call, in order."""
        return [args[0] for op, args, _ in self.calls if op == "create"]

    def create(self, config: MachineConfig, *, start: bool = True) -> MachineInfo:
        self._record("create", config, start=start)
        return MachineInfo.from_record(record_for(config))

    def get(self, vm: str) -> MachineInfo:
        self._record("get", vm)
        return MachineInfo.from_record(record_for(MachineConfig(), vm))

    def info(self, vm: str) -> MachineInfo:
        return self.get(vm)

    def delete(self, vm: str, *, force: bool = False) -> None:
        self._record("delete", vm, force=force)

    def close(self) -> None:
        self._record("close")

    def __getattr__(self, op: str) -> Any:
        def unsupported(*args: Any, **kwargs: Any) -> Any:
            raise errors.NotSupportedError(f"RecordingBackend does not do {op}",
                                           operation=op, reason="test double")
        return unsupported


class RecordingEngine:
    """Enough of ``Engine`` for ``LocalBackend.create`` and a server app."""

    def __init__(self) -> None:
        self.created: list[Any] = []

    def create(self, config: MachineConfig, *, start: bool = True) -> MachineRecord:
        self.created.append(config)
        return record_for(config)

    def list_machines(self, states: Any = None) -> list[MachineRecord]:
        return []

    def reap_expired(self) -> list[str]:  # the server's lifetime reaper calls this
        return []

    def close(self) -> None:
        pass

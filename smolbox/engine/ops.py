"""The few machine operations that helpers of the engine build on.

Why a protocol: the warm pool and the snapshot module create, exercise and delete
machines, but they must not import the engine facade that imports them (a cycle,
and a dependency pointing up). They depend on this small interface instead;
``Engine`` satisfies it.
"""

from __future__ import annotations

from typing import Any, Protocol

from smolbox.channel.types import ExecResult
from smolbox.config import MachineConfig
from smolbox.store import MachineRecord


class MachineOps(Protocol):
    def get(self, vm: str) -> MachineRecord: ...

    def create(self, config: MachineConfig | None = None, *, start: bool = True,
               use_pool: bool = True) -> MachineRecord: ...

    def exec(self, vm: str, cmd: list[str] | str, **options: Any) -> ExecResult: ...

    def delete(self, vm: str, *, force: bool = False) -> None: ...

"""The warm pool's refill thread against a failure-injecting stand-in for the engine
(``_FlakyOps``: a real engine cannot be made to raise an arbitrary bug on demand)."""

from __future__ import annotations

import itertools
from typing import Any

from smolbox.channel.types import ExecResult
from smolbox.config import MachineConfig
from smolbox.engine.pool import WarmPool
from smolbox.store import MachineRecord


class _FlakyOps:
    """Creates work; the first exec raises a plain bug (not a SmolboxError)."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.deleted: list[str] = []
        self._ids = itertools.count()
        self._execs = 0

    def get(self, vm: str) -> MachineRecord:
        return MachineRecord(id=vm, name=vm, config={}, image_ref="default")

    def create(self, config: MachineConfig | None = None, *, start: bool = True,
               use_pool: bool = True) -> MachineRecord:
        vm = f"m{next(self._ids)}"
        self.live.add(vm)
        return self.get(vm)

    def exec(self, vm: str, cmd: list[str] | str, **options: Any) -> ExecResult:
        self._execs += 1
        if self._execs == 1:
            raise FileNotFoundError("a bug in a lower layer")
        return ExecResult(exit_code=0, signal=None)

    def delete(self, vm: str, *, force: bool = False) -> None:
        self.live.discard(vm)
        self.deleted.append(vm)


def test_a_bug_while_warming_costs_one_machine_not_the_pool() -> None:
    ops = _FlakyOps()
    pool = WarmPool(ops, 2)  # type: ignore[arg-type]
    try:
        assert pool.wait_ready(timeout=10) == 2
        assert ops.deleted == ["m0"]  # created, failed its warm-up exec, deleted
        assert ops.live == {"m1", "m2"}
    finally:
        pool.close()
    assert ops.live == set()

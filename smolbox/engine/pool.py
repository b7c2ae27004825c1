"""A warm pool: machines restored from a template, running and ready to hand out.

Why: even a snapshot clone costs a QEMU spawn, a state load and an agent handshake;
a pooled machine is already past all of that, so handing one out is a rename and an
identity update. Useful in a long-lived process (the REST server, an agent runtime);
pointless in a one-shot CLI command, so it is off unless asked for.

Pool machines are ordinary rows labelled ``smolbox/pool=<owner>``, where the owner is
the pool's process identity (pid + start time). The owner deletes them on close; if
the owner dies, ``Engine.reconcile`` deletes them, so they never leak.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.ops import MachineOps
from smolbox.host.procs import owner_token
from smolbox.store import MachineRecord

log = logging.getLogger("smolbox.engine")

POOL_LABEL = "smolbox/pool"


def shape(config: MachineConfig) -> tuple[str, int, int]:
    """What must match between a pooled machine and a request."""
    return (config.image, config.memory_mib, config.vcpus)


class WarmPool:
    """Keeps ``size`` machines of one shape running; a background thread refills it."""

    def __init__(self, engine: MachineOps, size: int, config: MachineConfig | None = None) -> None:
        if not 1 <= size <= 32:
            raise errors.ValidationError("warm pool size must be between 1 and 32",
                                         field="warm_pool", value=size)
        self.engine = engine
        self.size = size
        self.owner = owner_token()
        base = config or MachineConfig()
        self.config = base.model_copy(update={
            "name": None, "env": {}, "labels": {POOL_LABEL: self.owner}})
        self._ready: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0
        self._thread = threading.Thread(target=self._fill, name="smolbox-warm-pool",
                                        daemon=True)
        self._thread.start()

    def matches(self, config: MachineConfig) -> bool:
        return config.uses_template and shape(config) == shape(self.config)

    def take(self) -> MachineRecord | None:
        """A ready machine, or None when the pool is empty right now (never waits)."""
        with self._cond:
            vm_id = self._ready.pop(0) if self._ready else None
            self._cond.notify_all()
        return self.engine.get(vm_id) if vm_id is not None else None

    def wait_ready(self, count: int | None = None, timeout: float = 60.0) -> int:
        """Block until ``count`` (default: size) machines are ready; returns how many are."""
        want = self.size if count is None else count
        with self._cond:
            self._cond.wait_for(lambda: len(self._ready) >= want or self._closed, timeout)
            return len(self._ready)

    def _fill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._ready) < self.size)
                if self._closed:
                    return
            started: str | None = None
            try:
                record = self.engine.create(self.config, use_pool=False)
                started = record.id
                # One exec makes the guest translate (TCG) and page in the exec path
                # now, so the first exec after hand-out runs at warm speed.
                self.engine.exec(record.id, ["true"], timeout=30).assert_success()
            except Exception as err:  # this thread serves every later create: none kills it
                self._failures += 1
                if isinstance(err, errors.SmolboxError):
                    log.warning("warm pool could not start a machine: %s", err)
                else:
                    log.exception("warm pool could not start a machine")
                if started is not None:  # created but unusable: never left behind
                    with suppress(Exception):
                        self.engine.delete(started, force=True)
                if self._failures >= 3:
                    log.error("warm pool stops refilling after 3 failures in a row")
                    return
                continue
            self._failures = 0
            with self._cond:
                if self._closed:
                    orphan: str | None = record.id
                else:
                    orphan = None
                    self._ready.append(record.id)
                    self._cond.notify_all()
            if orphan is not None:
                self.engine.delete(orphan, force=True)

    def close(self) -> None:
        """Stop refilling and delete the machines nobody took."""
        with self._cond:
            self._closed = True
            leftovers, self._ready = self._ready, []
            self._cond.notify_all()
        self._thread.join(timeout=120)
        for vm_id in leftovers:
            try:
                self.engine.delete(vm_id, force=True)
            except errors.VMNotFoundError:
                continue

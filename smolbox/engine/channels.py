"""Claiming one of a machine's agent ports for this process.

QEMU serves one client per virtio-serial socket, and a new connection on a port
ends the guest's session on it. A machine therefore has several agent ports, and a
process that wants to talk to the agent first takes an exclusive ``flock`` on the
port's lock file in the run dir, then connects. The lock lives as long as the
connection, so the REST server, a warm pool, the CLI and SDK scripts can all use
the same machine at once without stealing each other's sessions; the kernel drops
the lock if the process dies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors
from smolbox.channel import AgentClient
from smolbox.engine.flock import try_exclusive
from smolbox.vmm.spec import agent_socket_paths

BUSY_POLL_SECONDS = 0.05


@dataclass
class AgentLease:
    """An agent connection plus the port lock that makes it ours."""

    client: AgentClient
    lock_fd: int

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)  # releases the flock
                self.lock_fd = -1


def claim_agent(run_dir: Path, *, vm_id: str, timeout: float) -> AgentLease:
    """Connect to the first free agent port; wait (up to ``timeout``) while all are taken.

    Connection errors (agent not up yet, handshake timeout) are raised as they come:
    callers that wait for a boot retry those themselves.
    """
    deadline = time.monotonic() + timeout
    sockets = agent_socket_paths(run_dir)
    while True:
        for index, socket_path in enumerate(sockets):
            try:
                lock_fd = try_exclusive(run_dir / f"agent{index}.lock", create=True)
            except FileNotFoundError:
                raise errors.CommandExecutionUnavailableError(
                    vm_id, "the machine's run directory is gone (it was stopped)") from None
            if lock_fd is None:
                continue
            try:
                remaining = max(0.05, deadline - time.monotonic())
                client = AgentClient.connect(socket_path, vm_id=vm_id, timeout=remaining)
            except BaseException:
                os.close(lock_fd)
                raise
            return AgentLease(client, lock_fd)
        if time.monotonic() >= deadline:
            raise errors.CommandExecutionUnavailableError(
                vm_id, f"all {len(sockets)} agent channels are in use by other processes",
                remediation="Close idle SDK sessions or servers holding this machine, "
                            "or retry shortly (the error is retryable).",
            )
        time.sleep(BUSY_POLL_SECONDS)


class AgentCache:
    """This process's agent connections, one claimed port per machine, reused.

    Why a cache: a handshake costs a round trip and a port claim, and the REST server
    or an SDK script runs many calls against the same machine. A connection that has
    dropped (or that its keepalive declared dead) is replaced on the next ``get``;
    ``forget`` closes one after a crash or stop so the port is free for other
    processes. Reconnects to one machine are serialised: fifty callers finding the same
    dead connection make one handshake attempt, not fifty.

    ``frozen(vm_id)`` says whether a machine is paused on purpose; its connections'
    keepalive then waits instead of declaring the silent agent dead.
    """

    def __init__(self, claim: Callable[..., AgentLease],
                 frozen: Callable[[str], bool] | None = None) -> None:
        self._claim = claim
        self._frozen = frozen
        self._leases: dict[str, AgentLease] = {}
        self._lock = threading.Lock()
        self._connecting: dict[str, threading.Lock] = {}

    def get(self, vm_id: str, run_dir: Path, *, timeout: float = 10.0) -> AgentClient:
        """A connected client for ``vm_id`` (claiming a port when there is none)."""
        client = self._cached(vm_id)
        if client is not None:
            return client
        with self._lock:
            connecting = self._connecting.setdefault(vm_id, threading.Lock())
        if not connecting.acquire(timeout=timeout):
            raise errors.CommandExecutionUnavailableError(
                vm_id, f"another call has been reconnecting to the agent for {timeout:g} s",
                remediation="The agent is slow to answer; retry, or restart the machine.")
        try:
            client = self._cached(vm_id)  # the call we waited for may have connected
            if client is not None:
                return client
            lease = self._claim(run_dir, vm_id=vm_id, timeout=timeout)
            self._watch(vm_id, lease)
            with self._lock:
                self._leases[vm_id] = lease
            return lease.client
        finally:
            connecting.release()

    def _cached(self, vm_id: str) -> AgentClient | None:
        """The live cached client, or None after closing a dead one."""
        with self._lock:
            lease = self._leases.get(vm_id)
            if lease is not None and lease.client.connected:
                return lease.client
            self._leases.pop(vm_id, None)
        if lease is not None:
            lease.close()
        return None

    def _watch(self, vm_id: str, lease: AgentLease) -> None:
        frozen = self._frozen
        if frozen is not None:
            lease.client.keepalive_hold = lambda: frozen(vm_id)

    def put(self, vm_id: str, lease: AgentLease) -> None:
        """Keep the connection a boot opened (closing any older one)."""
        self._watch(vm_id, lease)
        with self._lock:
            old = self._leases.pop(vm_id, None)
            self._leases[vm_id] = lease
        if old is not None:
            old.close()

    def forget(self, vm_id: str) -> None:
        with self._lock:
            lease = self._leases.pop(vm_id, None)
            self._connecting.pop(vm_id, None)
        if lease is not None:
            lease.close()

    def close_all(self) -> None:
        with self._lock:
            leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            lease.close()

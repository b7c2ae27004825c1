"""Admission control: refuse a machine the host cannot hold, before anything is made.

Why before: a create that does not fit used to reach QEMU, fail there with a 500
``SPAWN_FAILED`` (whose body carried the argv), or worse, succeed and push the host
into swapping and the OOM killer, taking other users' machines down with it. The
caps are checked against the store's live machines (creating, running, paused) at
the moment of the request, so every front door (CLI, SDK, REST, pool) gets the same
answer: a retryable ``CAPACITY_EXHAUSTED`` naming the limit and what is in use.

Limits (environment, read at each check so a running server can be re-tuned by a
restart only — they are host policy, not per-request input):

- ``SMOLBOX_MAX_MACHINES`` (default 64) live machines;
- ``SMOLBOX_MAX_GUEST_MEMORY_MIB`` (default: the host's total memory) summed over
  live machines' ``memory_mib`` — clones share template RAM copy-on-write, so this
  is an upper bound on what guests can dirty;
- ``SMOLBOX_MAX_VCPUS`` (default 16 x host CPUs) summed over live machines.

One machine larger than the host's total memory is refused whatever the caps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.store import Store
from smolbox.store.states import ACTIVE_STATES

DEFAULT_MAX_MACHINES = 64
VCPU_OVERCOMMIT = 16  # TCG vCPUs are host threads; idle ones cost little
RETRY_AFTER_SECONDS = 5.0


def host_memory_mib() -> int:
    """MemTotal of this host in MiB (0 when /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.InvalidConfigError(f"{name} must be an integer, got {raw!r}",
                                        field=name, value=raw) from None
    if value < 1:
        raise errors.InvalidConfigError(f"{name} must be at least 1", field=name, value=raw)
    return value


@dataclass(frozen=True)
class HostLimits:
    max_machines: int
    max_guest_memory_mib: int
    max_vcpus: int
    host_memory_mib: int

    @classmethod
    def from_env(cls) -> HostLimits:
        memory = host_memory_mib()
        return cls(
            max_machines=_env_int("SMOLBOX_MAX_MACHINES", DEFAULT_MAX_MACHINES),
            max_guest_memory_mib=_env_int("SMOLBOX_MAX_GUEST_MEMORY_MIB", memory or 1 << 20),
            max_vcpus=_env_int("SMOLBOX_MAX_VCPUS", VCPU_OVERCOMMIT * (os.cpu_count() or 1)),
            host_memory_mib=memory,
        )


def admit(store: Store, config: MachineConfig, count: int = 1,
          limits: HostLimits | None = None) -> None:
    """Raise ``CapacityExhaustedError`` unless ``count`` machines of ``config`` fit."""
    limits = limits or HostLimits.from_env()
    if limits.host_memory_mib and config.memory_mib > limits.host_memory_mib:
        raise errors.CapacityExhaustedError(
            f"A machine with {config.memory_mib} MiB cannot fit this host "
            f"({limits.host_memory_mib} MiB of memory in total)",
            details={"limit": "host_memory_mib", "requested_mib": config.memory_mib,
                     "host_memory_mib": limits.host_memory_mib},
            help="Ask for less memory (memory_mib); this host can never hold this machine.",
        )
    live = store.list_machines(ACTIVE_STATES)
    used_memory = sum(int(r.config.get("memory_mib", 0)) for r in live)
    used_vcpus = sum(int(r.config.get("vcpus", 0)) for r in live)
    checks = (
        ("max_machines", len(live) + count, limits.max_machines,
         f"{len(live)} machines are live"),
        ("max_guest_memory_mib", used_memory + count * config.memory_mib,
         limits.max_guest_memory_mib, f"{used_memory} MiB of guest memory is in use"),
        ("max_vcpus", used_vcpus + count * config.vcpus, limits.max_vcpus,
         f"{used_vcpus} vCPUs are in use"),
    )
    for limit, wanted, allowed, in_use in checks:
        if wanted > allowed:
            raise errors.CapacityExhaustedError(
                f"No capacity for {count} more machine(s): {in_use}, the limit "
                f"{limit} is {allowed}",
                details={"limit": limit, "allowed": allowed, "requested": wanted,
                         "retry_after": RETRY_AFTER_SECONDS},
            )

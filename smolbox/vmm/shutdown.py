"""The shutdown ladder: ask nicely first, then less nicely, each step with a timeout.

1. ``agent``     – the guest agent syncs disks and reboots; with ``-no-reboot`` QEMU exits.
2. ``powerdown`` – QMP ``system_powerdown`` (ACPI power button). A microvm booted with
                   ``acpi=off`` has no power button, so this step is skipped there.
3. ``quit``      – QMP ``quit``: QEMU exits at once (guest disk caches are already
                   flushed to the host by QEMU itself).
4. ``sigterm`` / ``sigkill`` – signals, only to the process identity recorded at
                   spawn (pid + start time), never to a reused pid.

The ladder reports which step stopped the machine; if even SIGKILL fails it raises
``ShutdownError`` naming that step.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm.qmp import QMPSession

log = logging.getLogger("smolbox.vmm")


@dataclass(frozen=True)
class LadderTimeouts:
    agent: float = 5.0
    powerdown: float = 3.0
    quit: float = 3.0
    sigterm: float = 3.0
    sigkill: float = 5.0


def wait_for_exit(identity: ProcessIdentity, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while identity.is_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def stop_process(
    identity: ProcessIdentity,
    qmp_socket: Path,
    *,
    vm_id: str,
    agent_shutdown: Callable[[], None] | None = None,
    has_power_button: bool = False,
    timeouts: LadderTimeouts | None = None,
    graceful: bool = True,
) -> str:
    """Run the ladder; return the name of the step after which QEMU was gone."""
    limits = timeouts or LadderTimeouts()
    if not identity.is_alive():
        return "already-stopped"

    def via_qmp(command: str) -> Callable[[], None]:
        def run() -> None:
            with QMPSession(qmp_socket, timeout=2.0) as qmp:
                qmp.command(command)
        return run

    steps: list[tuple[str, Callable[[], None] | None, float]] = []
    if graceful:
        steps.append(("agent", agent_shutdown, limits.agent))
        steps.append(("powerdown", via_qmp("system_powerdown") if has_power_button else None,
                      limits.powerdown))
    steps += [
        ("quit", via_qmp("quit"), limits.quit),
        ("sigterm", lambda: identity.signal(signal.SIGTERM), limits.sigterm),
        ("sigkill", lambda: identity.signal(signal.SIGKILL), limits.sigkill),
    ]
    for name, action, timeout in steps:
        if action is None:
            continue
        try:
            action()
        except errors.SmolboxError as err:
            log.debug("shutdown step %s of %s failed: %s", name, vm_id, err)
            if not identity.is_alive():
                return name
            continue
        if wait_for_exit(identity, timeout):
            return name
        log.warning("machine %s still running after shutdown step %s", vm_id, name)
    raise errors.ShutdownError(
        f"Machine '{vm_id}' did not stop, even after SIGKILL (pid {identity.pid})",
        vm_id=vm_id, step="sigkill", details={"pid": identity.pid},
    )

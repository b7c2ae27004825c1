"""The engine's seam to the host: how a VMM is started and how its agent is reached.

Why a seam: every rollback branch of the lifecycle (a spawn that fails, a restore
that breaks, an agent that never answers, a snapshot interrupted half-way) must
leave nothing behind, and waiting for a real QEMU to fail at exactly the right
moment is slow and unreliable. The engine takes a ``Launcher``; production uses
``QemuLauncher``, and ``tests/engine/fake_vmm.py`` provides one that fails at step N
so unit tests drive each branch in milliseconds. Everything else the engine does
(store rows, files, overlays, network) stays real in those tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from smolbox.engine.channels import AgentLease, claim_agent
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm.handle import QemuHandle, VMMHandle
from smolbox.vmm.spec import VMSpec


class Launcher(Protocol):
    """Starts VMMs, re-attaches to running ones, and claims agent connections."""

    def spawn(self, spec: VMSpec, console_log: Path) -> VMMHandle: ...

    def attach(self, identity: ProcessIdentity, run_dir: Path, console_log: Path,
               name: str) -> VMMHandle: ...

    def claim_agent(self, run_dir: Path, *, vm_id: str, timeout: float) -> AgentLease: ...


class QemuLauncher:
    """Real QEMU processes, each in its own jail unless the user opted out
    (``SMOLBOX_JAIL=off``), and real agent connections over their sockets."""

    def __init__(self, jail: JailSettings | None = None) -> None:
        self.jail = jail if jail is not None else JailSettings.from_env()

    def spawn(self, spec: VMSpec, console_log: Path) -> VMMHandle:
        return QemuHandle.spawn(spec, console_log, self.jail)

    def attach(self, identity: ProcessIdentity, run_dir: Path, console_log: Path,
               name: str) -> VMMHandle:
        return QemuHandle.attach(identity, run_dir, console_log, name)

    def claim_agent(self, run_dir: Path, *, vm_id: str, timeout: float) -> AgentLease:
        return claim_agent(run_dir, vm_id=vm_id, timeout=timeout)

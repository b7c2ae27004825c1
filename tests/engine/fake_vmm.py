"""A fake VMM launcher for failure injection: it fails at the N-th call of a named step.

Why a fake: the engine's rollback branches (a spawn failing, a restore breaking, an
agent that never answers, a snapshot interrupted, one clone of four failing) must
leave nothing behind, and a real QEMU cannot be made to fail at exactly those
points on demand. This launcher stands in for QEMU and the guest agent only;
everything else the engine does in these tests is real: the SQLite store, the
machine and run directories, qcow2 overlays made by qemu-img, snapshot files and
their SHA-256 manifests, the network manager (modes none and user).

Steps that can be made to fail (``FailurePlan(step, nth)``):
``spawn``, ``load_state``, ``save_state``, ``qmp:<command>`` (e.g. ``qmp:cont``),
``stop`` (the shutdown ladder), ``claim_agent``, ``set_identity``, ``set_env``,
``exec``.

A fake VMM writes a pidfile and placeholder socket files into its run dir (and the
RAM file when the spec asks for a shared one), so cleanup of the run dir is
observable; fake pids are above any real pid_max and can never be signalled.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolbox import errors
from smolbox.channel.types import ExecResult
from smolbox.engine.channels import AgentLease
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm.spec import VMSpec

FAKE_PID_BASE = 1 << 23  # above the kernel's pid_max limit (4194304)


def injected(step: str) -> errors.SmolboxError:
    """The error a step fails with: the class the real part would raise there."""
    message = f"injected failure at {step}"
    if step == "spawn":
        return errors.SpawnError(message)
    if step in ("load_state", "save_state"):
        return errors.VMMError(message)
    if step.startswith("qmp:"):
        return errors.QMPError(message)
    if step == "stop":
        return errors.ShutdownError(message)
    return errors.GuestProtocolError(message)


@dataclass
class FailurePlan:
    """Fail the ``nth`` call (1-based) of ``step``; ``None`` never fails."""

    step: str | None = None
    nth: int = 1
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, step: str) -> bool:
        """Count a call of ``step``; True when this is the call that must fail."""
        with self.lock:
            self.calls[step] += 1
            return step == self.step and self.calls[step] == self.nth

    def hit(self, step: str) -> None:
        if self.due(step):
            raise injected(step)


class FakeQMP:
    def __init__(self, vmm: FakeVMM) -> None:
        self.vmm = vmm

    def command(self, name: str, timeout: float | None = None, **arguments: Any) -> Any:
        self.vmm.plan.hit(f"qmp:{name}")
        self.vmm.commands.append(name)
        return {}

    def status(self) -> str:
        return "paused" if self.vmm.commands[-1:] == ["stop"] else "running"


class FakeVMM:
    """One fake QEMU process: alive until ``stop``."""

    def __init__(self, spec: VMSpec, identity: ProcessIdentity, plan: FailurePlan) -> None:
        self.spec = spec
        self.identity = identity
        self.plan = plan
        self.alive = True
        self.commands: list[str] = []
        spec.pidfile.write_text(str(identity.pid))
        for placeholder in (spec.qmp_socket, *spec.agent_sockets):
            placeholder.touch()
        if spec.ram.kind == "file" and spec.ram.share and spec.ram.path is not None:
            with open(spec.ram.path, "ab") as ram:
                ram.truncate(1 << 20)  # small: the fake never maps it, the hashing is real

    def is_alive(self) -> bool:
        return self.alive

    @contextmanager
    def qmp(self, timeout: float = 10.0) -> Iterator[FakeQMP]:
        yield FakeQMP(self)

    def save_state(self, dest: Path, *, ignore_shared: bool) -> None:
        self.plan.hit("save_state")
        dest.write_bytes(b"fake device state" if ignore_shared else b"fake state + RAM")

    def load_state(self, src: Path, *, ignore_shared: bool) -> None:
        self.plan.hit("load_state")
        if not src.exists():
            raise errors.VMMError(f"fake load: {src} is missing")

    def run_state(self) -> str | None:
        return ("paused" if self.commands[-1:] == ["stop"] else "running") if self.alive else None

    def drain_console(self) -> str:
        return ""

    def console_tail(self) -> str:
        return ""

    def stderr_tail(self) -> str:
        return ""

    def jail_info(self) -> dict[str, Any] | None:
        return None

    def stop(self, *, graceful: bool, agent_shutdown: Callable[[], None] | None = None,
             has_power_button: bool = False) -> str:
        if not self.alive:
            return "already-stopped"
        self.plan.hit("stop")
        self.alive = False
        return "agent" if graceful and agent_shutdown is not None else "sigkill"


class FakeAgent:
    """The guest agent calls the engine makes while booting, adopting and exec'ing."""

    def __init__(self, plan: FailurePlan) -> None:
        self.plan = plan
        self.connected = True

    def set_identity(self, hostname: str, machine_id: str, entropy: bytes, time_ns: int) -> None:
        self.plan.hit("set_identity")

    def set_env(self, env: dict[str, str]) -> None:
        self.plan.hit("set_env")

    def exec(self, cmd: list[str] | str, **options: Any) -> ExecResult:
        self.plan.hit("exec")
        command = list(cmd) if isinstance(cmd, list) else [cmd]
        if self.plan.due("exec:exit1"):  # the command runs but fails in the guest
            return ExecResult(exit_code=1, signal=None, command=command,
                              stderr_bytes=b"fake_vmm: RTNETLINK answers: File exists\n")
        return ExecResult(exit_code=0, signal=None, command=command)

    def sync_time(self) -> None:
        self.plan.hit("sync_time")

    def shutdown(self, timeout: float = 10.0) -> None:
        self.plan.hit("shutdown")

    def close(self) -> None:
        self.connected = False


class FakeLauncher:
    """The engine's ``Launcher`` with fake VMMs and agents, failing per ``plan``."""

    def __init__(self, plan: FailurePlan | None = None) -> None:
        self.plan = plan or FailurePlan()
        self.vmms: dict[int, FakeVMM] = {}
        self.agents: list[FakeAgent] = []
        self._pids = itertools.count(FAKE_PID_BASE)
        self._lock = threading.Lock()

    def spawn(self, spec: VMSpec, console_log: Path) -> FakeVMM:
        self.plan.hit("spawn")
        with self._lock:
            identity = ProcessIdentity(next(self._pids), 1)
            vmm = FakeVMM(spec, identity, self.plan)
            self.vmms[identity.pid] = vmm
        return vmm

    def attach(self, identity: ProcessIdentity, run_dir: Path, console_log: Path,
               name: str) -> FakeVMM:
        return self.vmms[identity.pid]

    def claim_agent(self, run_dir: Path, *, vm_id: str, timeout: float) -> AgentLease:
        self.plan.hit("claim_agent")
        agent = FakeAgent(self.plan)
        with self._lock:
            self.agents.append(agent)
        return AgentLease(agent, -1)  # type: ignore[arg-type]

    def live(self) -> list[FakeVMM]:
        return [vmm for vmm in self.vmms.values() if vmm.alive]

    def open_agents(self) -> list[FakeAgent]:
        return [agent for agent in self.agents if agent.connected]

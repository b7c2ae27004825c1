"""A handle on one machine's QEMU process: the engine's whole view of a VMM.

Why a handle: the engine used to reach into five vmm modules (spawn, QMP, migration,
console, shutdown) with the same pid, socket and log paths each time. A handle
bundles them: it is made by ``QemuHandle.spawn`` (a new process) or
``QemuHandle.attach`` (one a row already records), and offers exactly what the
lifecycle needs — ``qmp()``, state save/load, the console, ``stop()`` — so the
engine never handles a pid or a socket path itself, and a test can hand the engine
a fake handle that fails at a chosen step (see ``smolbox/engine/launcher.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from smolbox import errors
from smolbox.errors import SmolboxError
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm import console, jail
from smolbox.vmm.migration import load_state, save_state
from smolbox.vmm.process import read_tail, spawn
from smolbox.vmm.qmp import QMPSession
from smolbox.vmm.shutdown import stop_process
from smolbox.vmm.spec import QMP_SOCKET, VMSpec

SNAPSHOT_QMP_TIMEOUT = 60.0
RUN_STATE_TIMEOUT = 5.0


class QMPCommands(Protocol):
    """The part of a QMP session the engine uses (``QMPSession`` is one)."""

    def command(self, name: str, timeout: float | None = None, **arguments: Any) -> Any: ...

    def status(self) -> str: ...


class VMMHandle(Protocol):
    """What the engine may do with a machine's VMM process."""

    @property
    def identity(self) -> ProcessIdentity: ...

    def is_alive(self) -> bool: ...

    def qmp(self, timeout: float = 10.0) -> AbstractContextManager[QMPCommands]: ...

    def save_state(self, dest: Path, *, ignore_shared: bool) -> None: ...

    def load_state(self, src: Path, *, ignore_shared: bool) -> None: ...

    def run_state(self) -> str | None: ...

    def drain_console(self) -> str: ...

    def console_tail(self) -> str: ...

    def stderr_tail(self) -> str: ...

    def jail_info(self) -> dict[str, Any] | None: ...

    def stop(self, *, graceful: bool, agent_shutdown: Callable[[], None] | None = None,
             has_power_button: bool = False) -> str: ...


@dataclass
class QemuHandle:
    """A real QEMU process, identified by pid + start time, with its run dir."""

    identity: ProcessIdentity
    run_dir: Path
    console_log: Path
    name: str

    @classmethod
    def spawn(cls, spec: VMSpec, console_log: Path,
              jail_settings: JailSettings | None = None) -> QemuHandle:
        """Start QEMU for ``spec`` (returns once its sockets exist), jailed when
        ``jail_settings`` say so."""
        return cls(spawn(spec, jail=jail_settings), spec.run_dir, console_log, spec.name)

    @classmethod
    def attach(cls, identity: ProcessIdentity, run_dir: Path, console_log: Path,
               name: str) -> QemuHandle:
        """A handle on a QEMU started earlier, possibly by another process."""
        return cls(identity, run_dir, console_log, name)

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / QMP_SOCKET

    def is_alive(self) -> bool:
        return self.identity.is_alive()

    @contextmanager
    def qmp(self, timeout: float = 10.0) -> Iterator[QMPCommands]:
        with QMPSession(self.qmp_socket, timeout=timeout) as session:
            yield session

    def save_state(self, dest: Path, *, ignore_shared: bool) -> None:
        """Device state (and RAM unless ``ignore_shared``) to ``dest``; QEMU ends paused."""
        with QMPSession(self.qmp_socket, timeout=SNAPSHOT_QMP_TIMEOUT) as session:
            save_state(session, dest, ignore_shared=ignore_shared)

    def load_state(self, src: Path, *, ignore_shared: bool) -> None:
        """Load ``src`` into a QEMU started with ``incoming``; it ends paused."""
        try:
            with QMPSession(self.qmp_socket, timeout=SNAPSHOT_QMP_TIMEOUT) as session:
                load_state(session, src, ignore_shared=ignore_shared)
        except errors.VMMError as err:
            if self.is_alive():
                raise
            raise errors.SpawnError(f"QEMU exited before it loaded the state: {err.message}",
                                    details={"stderr": self.stderr_tail()}) from None

    def run_state(self) -> str | None:
        """QEMU's own run state (QMP ``query-status``: ``running``, ``paused``,
        ``io-error``…), or None when QMP cannot be reached or does not answer."""
        try:
            with QMPSession(self.qmp_socket, timeout=RUN_STATE_TIMEOUT) as session:
                return session.status()
        except SmolboxError:
            return None

    def drain_console(self) -> str:
        return console.drain(self.qmp_socket, self.console_log)

    def console_tail(self) -> str:
        return console.tail(self.console_log)

    def stderr_tail(self) -> str:
        return read_tail(self.run_dir / "qemu.stderr")

    def stop(self, *, graceful: bool, agent_shutdown: Callable[[], None] | None = None,
             has_power_button: bool = False) -> str:
        """The shutdown ladder (agent, power button, quit, SIGTERM, SIGKILL); returns
        the step after which QEMU was gone."""
        try:
            return stop_process(self.identity, self.qmp_socket, vm_id=self.name,
                                agent_shutdown=agent_shutdown if graceful else None,
                                has_power_button=has_power_button, graceful=graceful)
        finally:
            if not self.identity.is_alive():
                jail.release(self.run_dir)  # its cgroup, uid and jail dir

    def jail_info(self) -> dict[str, Any] | None:
        """The jail this QEMU runs in (uid, cgroup, limits), None when unjailed."""
        return jail.describe(self.run_dir)

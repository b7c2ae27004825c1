"""LocalBackend: the SDK on the embedded engine in this process (no daemon).

Why so thin: the engine already owns lifecycles, state and cleanup; this class
only translates store records to the wire models and keeps the engine's guest
context around file operations so a dead VMM surfaces as ``VMCrashedError``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import BinaryIO

from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.errormap import translating_methods
from smolbox.paths import Paths
from smolbox.sdk.backend import Command, ShellSession
from smolbox.sdk.models import MachineInfo, SnapshotInfo
from smolbox.sdk.pty import AgentShell
from smolbox.store.states import MachineState


@translating_methods
class LocalBackend:
    """Machines on this host through :class:`smolbox.engine.engine.Engine`.

    Every public method passes foreign exceptions (``OSError``, ``MemoryError``…)
    through :mod:`smolbox.errormap`, so SDK users only ever see catalogue errors.

    Pass ``engine`` to share one (it is then not closed by :meth:`close`);
    otherwise one is opened on ``paths`` (default: from the environment).
    """

    name = "local"

    def __init__(self, engine: Engine | None = None, *, paths: Paths | None = None) -> None:
        self._owned = engine is None
        self.engine = engine if engine is not None else Engine.open(paths)

    # ---------------------------------------------------------------- machines
    def create(self, config: MachineConfig, *, start: bool = True) -> MachineInfo:
        """Create a machine from ``config`` as given (validated by the caller, not again).

        Raises ``CapacityExhaustedError``, ``VMAlreadyExistsError``, ``ImageNotFoundError``,
        ``OperationTimeoutError`` (boot), ``NotSupportedError`` (mounts).
        """
        return MachineInfo.from_record(self.engine.create(config, start=start))

    def get(self, vm: str) -> MachineInfo:
        """The machine's record. Raises ``VMNotFoundError``."""
        return MachineInfo.from_record(self.engine.get(vm))

    def list(self, states: set[str] | None = None) -> list[MachineInfo]:
        """All machines, or those in one of ``states``."""
        wanted = {MachineState(s) for s in states} if states else None
        return [MachineInfo.from_record(r) for r in self.engine.list_machines(wanted)]

    def info(self, vm: str) -> MachineInfo:
        """The record plus live details. Raises ``VMNotFoundError``."""
        return MachineInfo.model_validate(self.engine.info(vm))

    def start(self, vm: str) -> MachineInfo:
        """Boot a stopped machine. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``CapacityExhaustedError``, ``OperationTimeoutError``."""
        return MachineInfo.from_record(self.engine.start(vm))

    def stop(self, vm: str, *, graceful: bool = True) -> str:
        """Stop (disk kept); the shutdown step that worked. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``."""
        return self.engine.stop(vm, graceful=graceful)

    def restart(self, vm: str) -> MachineInfo:
        """Stop, then start. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``OperationTimeoutError``."""
        return MachineInfo.from_record(self.engine.restart(vm))

    def pause(self, vm: str) -> MachineInfo:
        """Freeze the vCPUs. Raises ``VMNotFoundError``, ``InvalidTransitionError``."""
        return MachineInfo.from_record(self.engine.pause(vm))

    def set_timeout(self, vm: str, seconds: float | None) -> MachineInfo:
        """End the lifetime ``seconds`` from now (None: never). Raises
        ``VMNotFoundError``, ``ValidationError``."""
        return MachineInfo.from_record(self.engine.set_timeout(vm, seconds))

    def resume(self, vm: str) -> MachineInfo:
        """Continue a paused machine. Raises ``VMNotFoundError``, ``InvalidTransitionError``."""
        return MachineInfo.from_record(self.engine.resume(vm))

    def delete(self, vm: str, *, force: bool = False) -> None:
        """Stop if needed (``force``: no graceful shutdown), then delete the machine and
        what it owns. Raises ``VMNotFoundError``."""
        self.engine.delete(vm, force=force)

    def logs(self, vm: str, *, follow: bool = False) -> Iterator[str]:
        """The serial console's text. Raises ``VMNotFoundError``."""
        yield from self.engine.logs(vm, follow=follow)

    # ---------------------------------------------------------------- commands
    def exec(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
             cwd: str | None = None, user: str | None = None, stdin: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command to completion. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``OperationTimeoutError``, ``ValidationError``,
        ``VMCrashedError``."""
        return self.engine.exec(vm, cmd, env=env, cwd=cwd, user=user, stdin=stdin,
                                timeout=timeout)

    def exec_stream(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
                    cwd: str | None = None, user: str | None = None,
                    stdin: bytes | None = None,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Output events as they arrive, then ``exit``. Raises what :meth:`exec` raises."""
        yield from self.engine.exec_stream(vm, cmd, env=env, cwd=cwd, user=user, stdin=stdin,
                                       timeout=timeout)

    def shell(self, vm: str, *, command: builtins.list[str] | None = None, rows: int = 24,
              cols: int = 80, env: dict[str, str] | None = None) -> ShellSession:
        """A process on a guest pseudo-terminal over the agent. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``."""
        return AgentShell(self.engine.guest(vm, "shell"), command, rows, cols, env)

    # ------------------------------------------------------------------- files
    def write_file(self, vm: str, path: str, data: bytes | BinaryIO, *,
                   mode: int = 0o644) -> None:
        """Write a guest file atomically. Raises ``VMNotFoundError``, ``ValidationError``,
        ``GuestFileError``."""
        self.engine.write_file(vm, path, data, mode=mode)  # large files: the transfer disk

    def read_file(self, vm: str, path: str) -> Iterator[bytes]:
        """A guest file in chunks. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``."""
        yield from self.engine.read_file_stream(vm, path)  # large files: the transfer disk

    def list_dir(self, vm: str, path: str) -> builtins.list[FileStat]:
        """A guest directory's entries. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``."""
        with self.engine.guest(vm, "list") as agent:
            return agent.list_dir(path)

    def stat(self, vm: str, path: str) -> FileStat:
        """A guest path's metadata. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``."""
        with self.engine.guest(vm, "stat") as agent:
            return agent.stat(path)

    def mkdir(self, vm: str, path: str, *, parents: bool = True) -> None:
        """Make a guest directory. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``."""
        with self.engine.guest(vm, "mkdir") as agent:
            agent.mkdir(path, parents=parents)

    def remove(self, vm: str, path: str, *, recursive: bool = False) -> None:
        """Remove a guest path. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``."""
        with self.engine.guest(vm, "remove") as agent:
            agent.remove(path, recursive=recursive)

    # --------------------------------------------------------------- snapshots
    def snapshot(self, vm: str, name: str) -> SnapshotInfo:
        """Save memory and disk as ``name``. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``SnapshotAlreadyExistsError``."""
        return SnapshotInfo.from_record(self.engine.snapshot(vm, name))

    def list_snapshots(self, vm: str | None = None) -> builtins.list[SnapshotInfo]:
        """All snapshots, or those of ``vm``."""
        return [SnapshotInfo.from_record(s) for s in self.engine.list_snapshots(vm)]

    def get_snapshot(self, name: str) -> SnapshotInfo:
        """One snapshot. Raises ``SnapshotNotFoundError``."""
        return SnapshotInfo.from_record(self.engine.get_snapshot(name))

    def delete_snapshot(self, name: str) -> None:
        """Delete a snapshot. Raises ``SnapshotNotFoundError``."""
        self.engine.delete_snapshot(name)

    def fork(self, snapshot: str, count: int = 1, *, names: builtins.list[str] | None = None,
             env: dict[str, str] | None = None) -> builtins.list[MachineInfo]:
        """``count`` machines from a snapshot, all or nothing. Raises
        ``SnapshotNotFoundError``, ``CapacityExhaustedError``, ``VMAlreadyExistsError``."""
        return [MachineInfo.from_record(r)
                for r in self.engine.fork(snapshot, count, names=names, env=env)]

    def restore(self, vm: str, snapshot: str) -> MachineInfo:
        """Put the machine back to a snapshot. Raises ``VMNotFoundError``,
        ``SnapshotNotFoundError``, ``InvalidTransitionError``."""
        return MachineInfo.from_record(self.engine.restore(vm, snapshot))

    def close(self) -> None:
        """Close the engine if this backend opened it (a shared one stays open)."""
        if self._owned:
            self.engine.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What a backend must do for the SDK: the one seam between Machine and an engine.

Why a Protocol of plain calls keyed by machine id: ``Machine`` holds no engine or
HTTP knowledge, so the same ``Machine`` code runs on the embedded engine
(:class:`~smolbox.sdk.local.LocalBackend`) or a server
(:class:`~smolbox.sdk.remote.RemoteBackend`). Every method raises catalogue errors
only; an operation a backend cannot serve raises ``NotSupportedError``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.config import MachineConfig
from smolbox.sdk.models import MachineInfo, SnapshotInfo

Command = list[str] | str


@runtime_checkable
class ShellSession(Protocol):
    """An interactive process on a guest terminal: bytes in, bytes out, an exit code."""

    def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal (remote: ``ConnectionError`` once closed)."""
        ...

    def close_input(self) -> None:
        """No more input (like ^D at the start of a line)."""
        ...

    def output(self) -> Iterator[bytes]:
        """Terminal output until the process exits (then ``exit_code`` is set)."""
        ...

    @property
    def exit_code(self) -> int | None:
        """The process's exit status once :meth:`output` has ended, else ``None``."""
        ...

    def close(self) -> None:
        """End the session (kills the guest process if it still runs)."""
        ...


class Backend(Protocol):
    """The operations behind :class:`smolbox.sdk.Machine`.

    ``vm`` is a machine name or id. Errors are catalogue classes on every backend:
    ``VMNotFoundError`` / ``SnapshotNotFoundError`` for an unknown name,
    ``InvalidTransitionError`` for an operation the machine's state forbids,
    ``OperationTimeoutError`` when a step runs out of time, ``VMCrashedError`` when
    the VMM died, ``NotSupportedError`` for what a backend cannot do; a remote
    backend adds ``ConnectionError`` / ``RequestTimeoutError`` (transport) and
    ``RateLimitedError`` / ``UnavailableError`` (the server's answer).
    """

    name: str

    # machines
    def create(self, config: MachineConfig, *, start: bool = True) -> MachineInfo:
        """Make a machine from an already validated config (booted unless ``start=False``).

        Raises ``CapacityExhaustedError`` (host caps), ``VMAlreadyExistsError`` (name
        taken), ``ImageNotFoundError``, ``OperationTimeoutError`` (boot), ``SpawnError``,
        ``NotSupportedError`` (e.g. mounts). All or nothing: a failure leaves no machine.
        """
        ...

    def get(self, vm: str) -> MachineInfo:
        """The machine's record. Raises ``VMNotFoundError``."""
        ...

    def list(self, states: set[str] | None = None) -> list[MachineInfo]:
        """All machines, or those in one of ``states``."""
        ...

    def info(self, vm: str) -> MachineInfo:
        """The record plus live details (accelerator warnings). Raises ``VMNotFoundError``."""
        ...

    def start(self, vm: str) -> MachineInfo:
        """Boot a stopped machine. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``CapacityExhaustedError``, ``OperationTimeoutError`` (boot)."""
        ...

    def stop(self, vm: str, *, graceful: bool = True) -> str:
        """Stop the machine (disk kept); returns the shutdown step that worked.
        Raises ``VMNotFoundError``, ``InvalidTransitionError``."""
        ...

    def restart(self, vm: str) -> MachineInfo:
        """Stop, then start. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``OperationTimeoutError``."""
        ...

    def pause(self, vm: str) -> MachineInfo:
        """Freeze the vCPUs. Raises ``VMNotFoundError``, ``InvalidTransitionError``."""
        ...

    def set_timeout(self, vm: str, seconds: float | None) -> MachineInfo:
        """End the machine's lifetime ``seconds`` from now (None: never). Raises
        ``VMNotFoundError``, ``ValidationError``."""
        ...

    def resume(self, vm: str) -> MachineInfo:
        """Continue a paused machine. Raises ``VMNotFoundError``, ``InvalidTransitionError``."""
        ...

    def delete(self, vm: str, *, force: bool = False) -> None:
        """Stop it if needed (``force``: no graceful shutdown), then delete the machine
        and everything it owns. Raises ``VMNotFoundError``."""
        ...

    def logs(self, vm: str, *, follow: bool = False) -> Iterator[str]:
        """The serial console's text (``follow``: keep yielding as it grows).
        Raises ``VMNotFoundError``."""
        ...

    # commands
    def exec(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
             cwd: str | None = None, user: str | None = None, stdin: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command to completion. Raises ``VMNotFoundError``,
        ``InvalidTransitionError`` (not running), ``OperationTimeoutError`` (``timeout``
        passed; the command's process group is killed), ``ValidationError`` (empty
        command), ``VMCrashedError``."""
        ...

    def exec_stream(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
                    cwd: str | None = None, user: str | None = None,
                    stdin: bytes | None = None,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Output events as they arrive, ending with ``exit``; closing the iterator
        kills the command. Raises what :meth:`exec` raises."""
        ...

    def shell(self, vm: str, *, command: builtins.list[str] | None = None, rows: int = 24,
              cols: int = 80, env: dict[str, str] | None = None) -> ShellSession:
        """An interactive process on a guest pseudo-terminal. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``; ``NotSupportedError`` where ``env`` cannot be sent."""
        ...

    # files
    def write_file(self, vm: str, path: str, data: bytes | BinaryIO, *,
                   mode: int = 0o644) -> None:
        """Write a guest file atomically (streamed). Raises ``VMNotFoundError``,
        ``ValidationError`` (relative path), ``GuestFileError``."""
        ...

    def read_file(self, vm: str, path: str) -> Iterator[bytes]:
        """A guest file's content in chunks. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``."""
        ...

    def list_dir(self, vm: str, path: str) -> builtins.list[FileStat]:
        """A guest directory's entries. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``."""
        ...

    def stat(self, vm: str, path: str) -> FileStat:
        """One guest path's metadata. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``."""
        ...

    def mkdir(self, vm: str, path: str, *, parents: bool = True) -> None:
        """Make a guest directory. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``
        (missing parent without ``parents``)."""
        ...

    def remove(self, vm: str, path: str, *, recursive: bool = False) -> None:
        """Remove a guest file or directory. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``."""
        ...

    # snapshots
    def snapshot(self, vm: str, name: str) -> SnapshotInfo:
        """Save the machine's memory and disk as ``name``. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``SnapshotAlreadyExistsError``, ``OperationTimeoutError``."""
        ...

    def list_snapshots(self, vm: str | None = None) -> builtins.list[SnapshotInfo]:
        """All snapshots, or those taken of ``vm``."""
        ...

    def get_snapshot(self, name: str) -> SnapshotInfo:
        """One snapshot. Raises ``SnapshotNotFoundError``."""
        ...

    def delete_snapshot(self, name: str) -> None:
        """Delete a snapshot's files and row. Raises ``SnapshotNotFoundError``."""
        ...

    def fork(self, snapshot: str, count: int = 1, *, names: builtins.list[str] | None = None,
             env: dict[str, str] | None = None) -> builtins.list[MachineInfo]:
        """``count`` running machines from a snapshot, all or nothing. Raises
        ``SnapshotNotFoundError``, ``CapacityExhaustedError``, ``VMAlreadyExistsError``,
        ``ValidationError``."""
        ...

    def restore(self, vm: str, snapshot: str) -> MachineInfo:
        """Put the machine back to a snapshot of itself. Raises ``VMNotFoundError``,
        ``SnapshotNotFoundError``, ``InvalidTransitionError``."""
        ...

    def close(self) -> None:
        """Release what the backend holds (engine or HTTP connections)."""
        ...

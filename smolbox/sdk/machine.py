"""``Machine``: the one Python surface for a sandbox, whatever runs it.

Why a handle over a backend: the caller writes ``Machine.create()``,
``m.exec()``, ``m.files.write()`` once; whether the embedded engine or a remote
server does the work is the backend's business (see :mod:`smolbox.sdk.backend`).
A ``with`` block deletes the machine on exit even when the body raised, so an
agent's crash never leaves a VM running.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from smolbox import errors
from smolbox.channel.types import ExecEvent, ExecResult
from smolbox.config import MachineConfig
from smolbox.sdk.backend import Backend, Command, ShellSession
from smolbox.sdk.files import Files
from smolbox.sdk.models import MachineInfo, SnapshotInfo
from smolbox.sdk.resolve import borrowed_backend, resolve_backend

log = logging.getLogger("smolbox.sdk")


def build_config(config: MachineConfig | Mapping[str, Any] | None,
                 fields: Mapping[str, Any]) -> MachineConfig:
    """The one validation of a create request: ``config`` merged with keyword ``fields``.

    A ``MachineConfig`` without overrides is used as it is (it was validated when
    made); otherwise the merged values are validated once here, before any backend
    call, and the resulting object travels down unchanged (the remote backend
    serialises it once for the wire). Raises ``ValidationError`` naming the field.
    """
    if isinstance(config, MachineConfig):
        if not fields:
            return config
        base = config.model_dump(exclude_unset=True)
    else:
        base = dict(config or {})
    return MachineConfig.model_validate({**base, **fields})


class Snapshot:
    """A snapshot handle: fork new machines from it or delete it.

    ``info`` is the :class:`SnapshotInfo` as of when the handle was made.
    """

    def __init__(self, info: SnapshotInfo, backend: Backend) -> None:
        self.info = info
        self._backend = backend

    @property
    def name(self) -> str:
        """The snapshot's name (unique on its host)."""
        return self.info.name

    @property
    def id(self) -> str:
        """The snapshot's internal id."""
        return self.info.id

    def fork(self, count: int = 1, *, names: list[str] | None = None,
             env: dict[str, str] | None = None) -> list[Machine]:
        """``count`` new running machines from this snapshot, all or nothing.

        Raises ``SnapshotNotFoundError`` (deleted meanwhile), ``CapacityExhaustedError``,
        ``VMAlreadyExistsError`` (a name in ``names`` is taken), ``ValidationError``.
        """
        return Machine.fork(self.name, count, names=names, env=env, backend=self._backend)

    def delete(self) -> None:
        """Delete the snapshot's files (machines forked from it keep running).

        Raises ``SnapshotNotFoundError``.
        """
        self._backend.delete_snapshot(self.name)

    def __repr__(self) -> str:
        return f"Snapshot(name={self.name!r}, id={self.id!r})"


class Machine:
    """A microVM sandbox. Create with :meth:`create`, reach an existing one with
    :meth:`connect`; use as a context manager to delete it on exit.

    Every method raises catalogue errors (:mod:`smolbox.errors`) only, the same on
    both backends; on a remote backend any call may also raise ``ConnectionError``
    (server unreachable, connection broken) or ``RequestTimeoutError``.
    """

    def __init__(self, info: MachineInfo, backend: Backend, *,
                 owns_backend: bool = False) -> None:
        self._info = info
        self._backend = backend
        self._owns_backend = owns_backend
        self.files = Files(backend, info.id)

    # ---------------------------------------------------------------- factories
    @classmethod
    def create(cls, config: MachineConfig | Mapping[str, Any] | None = None, *,
               backend: Backend | None = None, url: str | None = None,
               token: str | None = None, start: bool = True, **fields: Any) -> Machine:
        """Create (and boot) a machine; keyword ``fields`` override ``config``.

        The config is validated once, here, before a backend is called: a bad field
        raises ``ValidationError`` with ``details["field"]``. The backend may raise
        ``CapacityExhaustedError`` (host caps; retry later), ``VMAlreadyExistsError``,
        ``ImageNotFoundError``, ``OperationTimeoutError`` (boot), ``NotSupportedError``.

        >>> with Machine.create(memory_mib=512, env={"MODE": "test"}) as m:
        ...     m.exec("echo $MODE").stdout
        """
        validated = build_config(config, fields)
        chosen, owned = resolve_backend(backend, url=url, token=token)
        try:
            info = chosen.create(validated, start=start)
        except BaseException:
            if owned:
                chosen.close()
            raise
        return cls(info, chosen, owns_backend=owned)

    @classmethod
    def connect(cls, vm: str, *, backend: Backend | None = None, url: str | None = None,
                token: str | None = None) -> Machine:
        """A handle on an existing machine (by name or id). Raises ``VMNotFoundError``."""
        chosen, owned = resolve_backend(backend, url=url, token=token)
        try:
            info = chosen.get(vm)
        except BaseException:
            if owned:
                chosen.close()
            raise
        return cls(info, chosen, owns_backend=owned)

    @classmethod
    def list(cls, *, backend: Backend | None = None, url: str | None = None,
             token: str | None = None,
             states: set[str] | None = None) -> builtins.list[MachineInfo]:
        """Every machine on the backend, or those in one of ``states``."""
        with borrowed_backend(backend, url=url, token=token) as (chosen, _):
            return chosen.list(states)

    @classmethod
    def fork(cls, snapshot: str, count: int = 1, *, names: builtins.list[str] | None = None,
             env: dict[str, str] | None = None, backend: Backend | None = None,
             url: str | None = None, token: str | None = None) -> builtins.list[Machine]:
        """``count`` new machines from a snapshot (all or nothing).

        Raises ``SnapshotNotFoundError``, ``CapacityExhaustedError``,
        ``VMAlreadyExistsError``, ``ValidationError``.
        """
        with borrowed_backend(backend, url=url, token=token) as (chosen, owned):
            infos = chosen.fork(snapshot, count, names=names, env=env)
        if owned:  # each clone gets its own connection to the same server
            return [cls.connect(i.id, url=url, token=token) for i in infos]
        return [cls(info, chosen) for info in infos]

    @staticmethod
    def list_snapshots(vm: str | None = None, *, backend: Backend | None = None,
                       url: str | None = None,
                       token: str | None = None) -> builtins.list[SnapshotInfo]:
        """Every snapshot on the backend, or those taken of machine ``vm``."""
        with borrowed_backend(backend, url=url, token=token) as (chosen, _):
            return chosen.list_snapshots(vm)

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> str:
        """The machine's internal id."""
        return self._info.id

    @property
    def name(self) -> str:
        """The name given at create (the id when none was)."""
        return self._info.name

    @property
    def state(self) -> str:
        """The state when last fetched; :meth:`refresh` updates it."""
        return self._info.state

    @property
    def backend(self) -> Backend:
        """The backend this handle talks to."""
        return self._backend

    def refresh(self) -> MachineInfo:
        """Fetch the machine's record again (updates :attr:`state`).

        Raises ``VMNotFoundError`` (deleted meanwhile).
        """
        self._info = self._backend.get(self.id)
        return self._info

    def info(self) -> MachineInfo:
        """Everything about the machine, including accelerator warnings.

        Raises ``VMNotFoundError``.
        """
        self._info = self._backend.info(self.id)
        return self._info

    # ------------------------------------------------------------------ commands
    def exec(self, cmd: Command, *, env: dict[str, str] | None = None, cwd: str | None = None,
             user: str | None = None, stdin: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command to completion (a str runs via ``/bin/sh -c``).

        A timeout kills the command's process group and raises
        ``OperationTimeoutError``; the machine stays usable. A non-zero exit is not
        an error (see ``ExecResult.assert_success``). Raises ``VMNotFoundError``,
        ``InvalidTransitionError`` (not running), ``ValidationError`` (empty command),
        ``VMCrashedError`` (the VMM died).
        """
        return self._backend.exec(self.id, cmd, env=env, cwd=cwd, user=user, stdin=stdin,
                                  timeout=timeout)

    def exec_stream(self, cmd: Command, *, env: dict[str, str] | None = None,
                    cwd: str | None = None, user: str | None = None,
                    stdin: bytes | None = None,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Output events as they arrive, ending with the ``exit`` event.

        Closing the iterator early kills the command. Raises what :meth:`exec` raises.
        """
        return self._backend.exec_stream(self.id, cmd, env=env, cwd=cwd, user=user,
                                         stdin=stdin, timeout=timeout)

    def shell(self, *, command: builtins.list[str] | None = None, rows: int = 24, cols: int = 80,
              env: dict[str, str] | None = None) -> ShellSession:
        """An interactive process on a guest pseudo-terminal (default: a login bash).

        Write with ``send``, read ``output()`` until it ends, then ``exit_code``;
        ``close`` kills the process. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``; remote: ``NotSupportedError`` for ``env``.
        """
        return self._backend.shell(self.id, command=command, rows=rows, cols=cols, env=env)

    def logs(self, *, follow: bool = False) -> Iterator[str]:
        """The serial console's text; ``follow`` keeps yielding as it grows.

        Raises ``VMNotFoundError``.
        """
        return self._backend.logs(self.id, follow=follow)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Machine:
        """Boot a stopped machine again (its disk is kept).

        Raises ``VMNotFoundError``, ``InvalidTransitionError`` (not stopped),
        ``CapacityExhaustedError``, ``OperationTimeoutError`` (boot).
        """
        self._info = self._backend.start(self.id)
        return self

    def stop(self, *, graceful: bool = True) -> str:
        """Stop the machine (disk kept); returns the shutdown step that worked.

        ``graceful=False`` skips the guest's shutdown. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``.
        """
        step = self._backend.stop(self.id, graceful=graceful)
        self.refresh()
        return step

    def restart(self) -> Machine:
        """Stop, then start. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``OperationTimeoutError``."""
        self._info = self._backend.restart(self.id)
        return self

    def pause(self) -> Machine:
        """Freeze the vCPUs (memory kept). Raises ``VMNotFoundError``,
        ``InvalidTransitionError`` (not running)."""
        self._info = self._backend.pause(self.id)
        return self

    def set_timeout(self, seconds: float | None) -> Machine:
        """End the machine's lifetime ``seconds`` from now (None: never); the server
        (or the next embedded engine start) deletes it then, or pauses it with
        ``on_timeout="pause"``. Raises ``VMNotFoundError``, ``ValidationError``."""
        self._info = self._backend.set_timeout(self.id, seconds)
        return self

    def resume(self) -> Machine:
        """Continue a paused machine. Raises ``VMNotFoundError``,
        ``InvalidTransitionError`` (not paused)."""
        self._info = self._backend.resume(self.id)
        return self

    def snapshot(self, name: str) -> Snapshot:
        """Save memory and disk as snapshot ``name``; the machine keeps running.

        Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``SnapshotAlreadyExistsError``, ``OperationTimeoutError``.
        """
        return Snapshot(self._backend.snapshot(self.id, name), self._backend)

    def restore(self, snapshot: str) -> Machine:
        """Put the machine back to a snapshot taken of it.

        Raises ``VMNotFoundError``, ``SnapshotNotFoundError``, ``InvalidTransitionError``.
        """
        self._info = self._backend.restore(self.id, snapshot)
        return self

    def delete(self, *, force: bool = False) -> None:
        """Delete the machine and everything it owns; the handle is unusable afterwards.

        A running machine is shut down first (``force``: killed without the graceful
        shutdown). Raises ``VMNotFoundError``.
        """
        try:
            self._backend.delete(self.id, force=force)
        finally:
            self.close()

    def close(self) -> None:
        """Release the connection this handle owns (the machine keeps running)."""
        if self._owns_backend:
            self._owns_backend = False
            self._backend.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.delete(force=True)
        except errors.NotFoundError:
            pass  # already deleted inside the block
        except errors.SmolboxError:
            if exc is None:
                raise
            log.warning("deleting machine %s failed while handling %r", self.id, exc,
                        exc_info=True)

    def __repr__(self) -> str:
        return f"Machine(id={self.id!r}, name={self.name!r}, state={self.state!r})"

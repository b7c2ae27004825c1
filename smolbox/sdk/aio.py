"""``AsyncMachine``: the Machine API for asyncio/trio code, generated from the sync one.

Why generated: every backend call blocks (QEMU, the agent socket, or HTTP), so the
async surface runs the *same* sync implementation in a worker thread
(``anyio.to_thread``) instead of keeping a second copy of thirty methods in step.
The descriptors below keep each method's signature for type checkers; iterators
become async iterators that pull each item in a worker thread and close the sync
iterator (which kills a streamed command) when the consumer stops early. Errors are
the sync methods' catalogue errors, raised from the ``await``.

Why its own thread limiter: anyio's default limiter (40 threads per event loop) is
shared with everything else in the loop, a smolbox server included, so SDK calls
that block for minutes (a boot, a long ``exec``, a shell waiting for output) could
starve it. Every SDK worker thread borrows from :func:`thread_limiter` instead:
:data:`THREAD_LIMIT` tokens per event loop, shared by all ``AsyncMachine`` handles in
that loop. More concurrent calls than that wait for a token; raise
``thread_limiter().total_tokens`` if an application holds more than a few streams or
shells open at once (each open ``output()`` / ``exec_stream`` holds one token while it
waits).
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from smolbox.config import MachineConfig
from smolbox.sdk.backend import Backend, ShellSession
from smolbox.sdk.files import Files
from smolbox.sdk.machine import Machine, Snapshot, build_config
from smolbox.sdk.models import MachineInfo, SnapshotInfo

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S")

_DONE = object()

THREAD_LIMIT = 16
"""Worker threads the async SDK uses at once per event loop (see the module docstring)."""

_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("smolbox_sdk_thread_limiter")


def thread_limiter() -> anyio.CapacityLimiter:
    """The SDK's limiter for the running event loop (made on first use, THREAD_LIMIT)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(THREAD_LIMIT)
        _LIMITER.set(limiter)
        return limiter


async def in_thread(func: Callable[..., R], *args: Any) -> R:
    """``func(*args)`` in a worker thread borrowed from the SDK's :func:`thread_limiter`."""
    return await anyio.to_thread.run_sync(func, *args, limiter=thread_limiter())


async def iterate_in_thread(iterator: Iterator[T], *,
                            limiter: anyio.CapacityLimiter | None = None) -> AsyncIterator[T]:
    """Pull a blocking iterator from worker threads; close it in one when we stop.

    ``limiter`` defaults to anyio's (the server's streams); the SDK passes its own.
    """
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, iterator, _DONE, limiter=limiter)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close, limiter=limiter)


class _InThread(Generic[S, P, R]):
    """``await obj.method(...)`` runs ``sync_obj.method(...)`` in a worker thread."""

    def __init__(self, func: Callable[Concatenate[S, P], R]) -> None:
        self._func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: Any = None) -> Callable[P, Awaitable[R]]:
        func = self._func

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await in_thread(functools.partial(func, obj._sync, *args, **kwargs))

        call.__doc__ = func.__doc__
        return call


class _IterInThread(Generic[S, P, T]):
    """``async for x in obj.method(...)`` over ``sync_obj.method(...)``'s iterator."""

    def __init__(self, func: Callable[Concatenate[S, P], Iterator[T]]) -> None:
        self._func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: Any = None) -> Callable[P, AsyncIterator[T]]:
        func = self._func

        async def call(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            iterator = await in_thread(functools.partial(func, obj._sync, *args, **kwargs))
            async for item in iterate_in_thread(iter(iterator), limiter=thread_limiter()):
                yield item

        call.__doc__ = func.__doc__
        return call


class AsyncFiles:
    """``await machine.files.write(...)`` and friends (see :class:`Files`, whose
    docstrings, errors included, each method carries)."""

    def __init__(self, files: Files) -> None:
        self._sync = files

    write = _InThread(Files.write)
    read = _InThread(Files.read)
    read_text = _InThread(Files.read_text)
    read_stream = _IterInThread(Files.read_stream)
    upload = _InThread(Files.upload)
    download = _InThread(Files.download)
    list = _InThread(Files.list)
    stat = _InThread(Files.stat)
    exists = _InThread(Files.exists)
    mkdir = _InThread(Files.mkdir)
    remove = _InThread(Files.remove)


class AsyncShellSession:
    """The async face of a :class:`ShellSession`: ``await send``, ``async for`` output.

    Sending and reading may run in different tasks at once (a terminal relay);
    ``async with`` closes the session (killing the guest process if it still runs).
    Errors are the sync session's: ``ConnectionError`` when a remote shell's
    connection breaks.
    """

    def __init__(self, session: ShellSession) -> None:
        self._sync = session

    @property
    def session(self) -> ShellSession:
        """The sync session underneath."""
        return self._sync

    async def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        await in_thread(self._sync.send, data)

    async def close_input(self) -> None:
        """No more input (like ^D at the start of a line)."""
        await in_thread(self._sync.close_input)

    async def output(self) -> AsyncIterator[bytes]:
        """Terminal output until the process exits (then :attr:`exit_code` is set)."""
        async for chunk in iterate_in_thread(iter(self._sync.output()),
                                             limiter=thread_limiter()):
            yield chunk

    @property
    def exit_code(self) -> int | None:
        """The process's exit status once :meth:`output` has ended, else ``None``."""
        return self._sync.exit_code

    async def close(self) -> None:
        """End the session (kills the guest process if it still runs)."""
        with anyio.CancelScope(shield=True):
            await in_thread(self._sync.close)

    async def __aenter__(self) -> AsyncShellSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSnapshot:
    """The async twin of :class:`Snapshot`: ``await snap.fork()``, ``await snap.delete()``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._sync = snapshot

    @property
    def snapshot(self) -> Snapshot:
        """The sync handle underneath."""
        return self._sync

    @property
    def info(self) -> SnapshotInfo:
        """The :class:`SnapshotInfo` as of when the handle was made."""
        return self._sync.info

    @property
    def name(self) -> str:
        """The snapshot's name (unique on its host)."""
        return self._sync.name

    @property
    def id(self) -> str:
        """The snapshot's internal id."""
        return self._sync.id

    async def fork(self, count: int = 1, *, names: builtins.list[str] | None = None,
                   env: dict[str, str] | None = None) -> builtins.list[AsyncMachine]:
        """``count`` new running machines from this snapshot, all or nothing.

        Raises ``SnapshotNotFoundError``, ``CapacityExhaustedError``,
        ``VMAlreadyExistsError``, ``ValidationError``.
        """
        made = await in_thread(functools.partial(self._sync.fork, count, names=names, env=env))
        return [AsyncMachine(m) for m in made]

    async def delete(self) -> None:
        """Delete the snapshot (machines forked from it keep running).

        Raises ``SnapshotNotFoundError``.
        """
        await in_thread(self._sync.delete)

    def __repr__(self) -> str:
        return f"AsyncSnapshot(name={self.name!r}, id={self.id!r})"


class AsyncMachine:
    """The async twin of :class:`Machine`: same methods, awaited; ``async with`` deletes.

    Each awaited method carries the sync method's docstring and raises the same
    catalogue errors; the blocking work runs on the SDK's own thread limiter.
    """

    def __init__(self, machine: Machine) -> None:
        self._sync = machine
        self.files = AsyncFiles(machine.files)

    # ------------------------------------------------------------- factories
    @classmethod
    async def create(cls, config: MachineConfig | Mapping[str, Any] | None = None, *,
                     backend: Backend | None = None, url: str | None = None,
                     token: str | None = None, start: bool = True,
                     **fields: Any) -> AsyncMachine:
        """Create (and boot) a machine; keyword ``fields`` override ``config``.

        The config is validated once, before any thread or backend is used: a bad
        field raises ``ValidationError``. Then as :meth:`Machine.create`
        (``CapacityExhaustedError``, ``VMAlreadyExistsError``, ``ImageNotFoundError``,
        ``OperationTimeoutError``).
        """
        validated = build_config(config, fields)
        made = await in_thread(functools.partial(
            Machine.create, validated, backend=backend, url=url, token=token, start=start))
        return cls(made)

    @classmethod
    async def connect(cls, vm: str, *, backend: Backend | None = None, url: str | None = None,
                      token: str | None = None) -> AsyncMachine:
        """A handle on an existing machine (by name or id). Raises ``VMNotFoundError``."""
        return cls(await in_thread(functools.partial(
            Machine.connect, vm, backend=backend, url=url, token=token)))

    @classmethod
    async def list(cls, *, backend: Backend | None = None, url: str | None = None,
                   token: str | None = None,
                   states: set[str] | None = None) -> builtins.list[MachineInfo]:
        """Every machine on the backend, or those in one of ``states``."""
        return await in_thread(functools.partial(
            Machine.list, backend=backend, url=url, token=token, states=states))

    @classmethod
    async def fork(cls, snapshot: str, count: int = 1, *,
                   names: builtins.list[str] | None = None,
                   env: dict[str, str] | None = None, backend: Backend | None = None,
                   url: str | None = None,
                   token: str | None = None) -> builtins.list[AsyncMachine]:
        """``count`` new machines from a snapshot (all or nothing).

        Raises ``SnapshotNotFoundError``, ``CapacityExhaustedError``,
        ``VMAlreadyExistsError``, ``ValidationError``.
        """
        made = await in_thread(functools.partial(
            Machine.fork, snapshot, count, names=names, env=env, backend=backend, url=url,
            token=token))
        return [cls(m) for m in made]

    @staticmethod
    async def list_snapshots(vm: str | None = None, *, backend: Backend | None = None,
                             url: str | None = None,
                             token: str | None = None) -> builtins.list[SnapshotInfo]:
        """Every snapshot on the backend, or those taken of machine ``vm``."""
        return await in_thread(functools.partial(
            Machine.list_snapshots, vm, backend=backend, url=url, token=token))

    # -------------------------------------------------------------- identity
    @property
    def id(self) -> str:
        """The machine's internal id."""
        return self._sync.id

    @property
    def name(self) -> str:
        """The name given at create (the id when none was)."""
        return self._sync.name

    @property
    def state(self) -> str:
        """The state when last fetched; :meth:`refresh` updates it."""
        return self._sync.state

    @property
    def machine(self) -> Machine:
        """The sync handle (for code that mixes both styles)."""
        return self._sync

    refresh = _InThread(Machine.refresh)
    info = _InThread(Machine.info)
    exec = _InThread(Machine.exec)
    exec_stream = _IterInThread(Machine.exec_stream)
    logs = _IterInThread(Machine.logs)
    stop = _InThread(Machine.stop)
    pause = _InThread(Machine.pause)
    resume = _InThread(Machine.resume)
    set_timeout = _InThread(Machine.set_timeout)
    start = _InThread(Machine.start)
    restart = _InThread(Machine.restart)
    restore = _InThread(Machine.restore)
    delete = _InThread(Machine.delete)
    close = _InThread(Machine.close)

    async def shell(self, *, command: builtins.list[str] | None = None, rows: int = 24,
                    cols: int = 80, env: dict[str, str] | None = None) -> AsyncShellSession:
        """An interactive process on a guest pseudo-terminal (default: a login bash).

        ``await s.send(...)``, ``async for chunk in s.output()``, then ``s.exit_code``;
        ``async with`` closes it. Raises ``VMNotFoundError``, ``InvalidTransitionError``;
        remote: ``NotSupportedError`` for ``env``, ``ConnectionError``.
        """
        session = await in_thread(functools.partial(
            self._sync.shell, command=command, rows=rows, cols=cols, env=env))
        return AsyncShellSession(session)

    async def snapshot(self, name: str) -> AsyncSnapshot:
        """Save memory and disk as snapshot ``name``; the machine keeps running.

        Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``SnapshotAlreadyExistsError``, ``OperationTimeoutError``.
        """
        return AsyncSnapshot(await in_thread(self._sync.snapshot, name))

    async def __aenter__(self) -> AsyncMachine:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            await in_thread(self._sync.__exit__, exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"AsyncMachine(id={self.id!r}, name={self.name!r})"


__all__ = ["THREAD_LIMIT", "AsyncFiles", "AsyncMachine", "AsyncShellSession", "AsyncSnapshot",
           "in_thread", "iterate_in_thread", "thread_limiter"]

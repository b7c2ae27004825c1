"""``AsyncMachine``: the Machine API for asyncio/trio code, generated from the sync one.

Why generated: every backend call blocks (QEMU, the agent socket, or HTTP), so the
async surface runs the *same* sync implementation in a worker thread
(``anyio.to_thread``) instead of keeping a second copy of thirty methods in step.
The descriptors below keep each method's signature for type checkers; iterators
become async iterators that pull each item in a worker thread and close the sync
iterator (which kills a streamed command) when the consumer stops early.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from smolbox.config import MachineConfig
from smolbox.sdk.backend import Backend
from smolbox.sdk.files import Files
from smolbox.sdk.machine import Machine, Snapshot
from smolbox.sdk.models import MachineInfo

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S")

_DONE = object()


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Pull a blocking iterator from worker threads; close it in one when we stop."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, iterator, _DONE)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)


class _InThread(Generic[S, P, R]):
    """``await obj.method(...)`` runs ``sync_obj.method(...)`` in a worker thread."""

    def __init__(self, func: Callable[Concatenate[S, P], R]) -> None:
        self._func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: Any = None) -> Callable[P, Awaitable[R]]:
        func = self._func

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = functools.partial(func, obj._sync, *args, **kwargs)
            return await anyio.to_thread.run_sync(bound)

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
            iterator = await anyio.to_thread.run_sync(
                functools.partial(func, obj._sync, *args, **kwargs))
            async for item in iterate_in_thread(iter(iterator)):
                yield item

        call.__doc__ = func.__doc__
        return call


class AsyncFiles:
    """``await machine.files.write(...)`` and friends (see :class:`Files`)."""

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


class AsyncMachine:
    """The async twin of :class:`Machine`: same methods, awaited; ``async with`` deletes."""

    def __init__(self, machine: Machine) -> None:
        self._sync = machine
        self.files = AsyncFiles(machine.files)

    # ------------------------------------------------------------- factories
    @classmethod
    async def create(cls, config: MachineConfig | Mapping[str, Any] | None = None, *,
                     backend: Backend | None = None, url: str | None = None,
                     token: str | None = None, start: bool = True,
                     **fields: Any) -> AsyncMachine:
        made = await anyio.to_thread.run_sync(functools.partial(
            Machine.create, config, backend=backend, url=url, token=token, start=start,
            **fields))
        return cls(made)

    @classmethod
    async def connect(cls, vm: str, *, backend: Backend | None = None, url: str | None = None,
                      token: str | None = None) -> AsyncMachine:
        return cls(await anyio.to_thread.run_sync(functools.partial(
            Machine.connect, vm, backend=backend, url=url, token=token)))

    @classmethod
    async def list(cls, *, backend: Backend | None = None, url: str | None = None,
                   token: str | None = None,
                   states: set[str] | None = None) -> builtins.list[MachineInfo]:
        return await anyio.to_thread.run_sync(functools.partial(
            Machine.list, backend=backend, url=url, token=token, states=states))

    @classmethod
    async def fork(cls, snapshot: str, count: int = 1, *,
                   names: builtins.list[str] | None = None,
                   env: dict[str, str] | None = None, backend: Backend | None = None,
                   url: str | None = None,
                   token: str | None = None) -> builtins.list[AsyncMachine]:
        made = await anyio.to_thread.run_sync(functools.partial(
            Machine.fork, snapshot, count, names=names, env=env, backend=backend, url=url,
            token=token))
        return [cls(m) for m in made]

    # -------------------------------------------------------------- identity
    @property
    def id(self) -> str:
        return self._sync.id

    @property
    def name(self) -> str:
        return self._sync.name

    @property
    def state(self) -> str:
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
    start = _InThread(Machine.start)
    restart = _InThread(Machine.restart)
    restore = _InThread(Machine.restore)
    delete = _InThread(Machine.delete)
    close = _InThread(Machine.close)

    async def snapshot(self, name: str) -> Snapshot:
        return await anyio.to_thread.run_sync(self._sync.snapshot, name)

    async def __aenter__(self) -> AsyncMachine:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._sync.__exit__, exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"AsyncMachine(id={self.id!r}, name={self.name!r})"


__all__ = ["AsyncFiles", "AsyncMachine", "iterate_in_thread"]

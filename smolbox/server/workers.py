"""Worker threads for calls into machines, bounded per machine and overall.

Why: every engine call runs in a worker thread (it blocks on QEMU, the agent or
SQLite). A guest can make its calls slow (a frozen agent holds an exec until the
keepalive gives up, ~20 s), and clients retry; unbounded, a few such machines would
take every thread and every route would stall — other machines' execs, ``list``,
``/readyz``. So calls that touch a machine's guest take a slot of that machine
(``per_machine``, refused at once with a retryable ``MACHINE_BUSY`` 429 when all are
taken) and run on their own thread pool (``total`` threads, queued beyond that),
apart from anyio's default pool, which the control routes keep to themselves.
A stream (exec output, a download) holds its slot until it ends.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request

from smolbox import errors
from smolbox.server.deps import open_stream

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

RETRY_AFTER_SECONDS = 1.0


class MachineWorkers:
    """Slots per machine plus the shared thread pool their calls run on."""

    def __init__(self, per_machine: int, total: int) -> None:
        self.per_machine = per_machine
        self.total = total
        self.threads = anyio.CapacityLimiter(total)
        self._slots: dict[str, anyio.CapacityLimiter] = {}

    @asynccontextmanager
    async def slot(self, vm: str) -> AsyncIterator[None]:
        """One of ``vm``'s slots for the duration of the block, or ``MachineBusyError``."""
        limiter = self._slots.get(vm)
        if limiter is None:
            limiter = self._slots[vm] = anyio.CapacityLimiter(self.per_machine)
        borrower = object()
        try:
            limiter.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            raise errors.MachineBusyError(vm, self.per_machine, RETRY_AFTER_SECONDS) from None
        try:
            yield
        finally:
            limiter.release_on_behalf_of(borrower)
            if limiter.borrowed_tokens == 0 and self._slots.get(vm) is limiter:
                del self._slots[vm]

    async def call(self, vm: str, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        async with self.slot(vm):
            return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs),
                                                  limiter=self.threads)

    async def stream(self, vm: str, make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Like ``deps.open_stream``, holding one of ``vm``'s slots until it ends."""
        slot = self.slot(vm)
        await slot.__aenter__()
        try:
            items = await open_stream(make, limiter=self.threads)
        except BaseException as exc:
            await slot.__aexit__(type(exc), exc, exc.__traceback__)
            raise

        async def held() -> AsyncIterator[T]:
            try:
                async for item in items:
                    yield item
            finally:
                await slot.__aexit__(None, None, None)

        return held()

    def load(self) -> dict[str, int]:
        """For ``/readyz``: threads in use and machines with every slot taken."""
        return {"machine_threads_in_use": int(self.threads.borrowed_tokens),
                "machine_threads": self.total,
                "busy_machines": sum(1 for limiter in self._slots.values()
                                     if limiter.available_tokens == 0)}


def workers(request: Request) -> MachineWorkers:
    """FastAPI dependency: the app's ``MachineWorkers``."""
    value: MachineWorkers = request.app.state.workers
    return value

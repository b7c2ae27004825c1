"""What route handlers share: the backend, worker threads, streamed responses.

Why every engine call goes through :func:`call`: the engine blocks (QEMU, QMP,
the agent socket, SQLite); running it on the event loop would stall every other
request. Streams pull each item in a worker thread and fetch the *first* item
before the response starts, so "machine not found" is still a proper 404 and not
a broken stream.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
from fastapi import Request

from smolbox.sdk.aio import iterate_in_thread
from smolbox.sdk.local import LocalBackend
from smolbox.server.settings import ServerSettings

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_DONE = object()


def backend(request: Request) -> LocalBackend:
    value: LocalBackend = request.app.state.backend
    return value


def settings(request: Request) -> ServerSettings:
    value: ServerSettings = request.app.state.settings
    return value


async def call(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))


async def open_stream(make: Callable[[], Iterator[T]], *,
                      limiter: anyio.CapacityLimiter | None = None) -> AsyncIterator[T]:
    """Start ``make()`` and fetch its first item in a thread (errors raise here)."""

    def first() -> tuple[Iterator[T], Any]:
        iterator = iter(make())
        try:
            return iterator, next(iterator, _DONE)
        except BaseException:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            raise

    iterator, head = await anyio.to_thread.run_sync(first, limiter=limiter)

    async def rest() -> AsyncIterator[T]:
        if head is _DONE:
            return
        yield head
        async for item in iterate_in_thread(iterator, limiter=limiter):
            yield item

    return rest()

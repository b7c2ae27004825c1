"""``create_app``: the FastAPI application behind ``smolbox serve``.

Why it takes an engine: tests and embedders share one engine (and its agent
connections) with the server; ``smolbox serve`` lets the app open its own and
close it at shutdown. Either way the state lives in the store, so the CLI and the
server see the same machines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import Route

import smolbox
from smolbox.engine.engine import Engine
from smolbox.engine.lifetime import Reaper
from smolbox.mcp.http import PATH as MCP_PATH
from smolbox.mcp.http import McpEndpoint
from smolbox.sdk.local import LocalBackend
from smolbox.server import e2b
from smolbox.server import errors as error_handlers
from smolbox.server.auth import require_token
from smolbox.server.bodylimit import BodyLimitMiddleware
from smolbox.server.metrics import Metrics
from smolbox.server.middleware import RequestContextMiddleware, RouteLabels
from smolbox.server.routes import commands, files, health, machines, shell, snapshots
from smolbox.server.settings import ServerSettings
from smolbox.server.workers import MachineWorkers

API_PREFIX = "/v1"


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The app; with ``engine=None`` it opens an Engine at startup and closes it at shutdown."""
    backend = LocalBackend(engine) if engine is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opening the engine blocks (SQLite, reconcile, netlink via its own event loop):
        # do it in a worker thread, never on the server's loop.
        owned = None
        if app.state.backend is None:
            owned = await anyio.to_thread.run_sync(LocalBackend)
            app.state.backend = owned
        # Lifetimes (MachineConfig.timeout, E2B's timeout) are enforced while serving.
        current: LocalBackend = app.state.backend
        reaper = Reaper(current.engine.reap_expired).start()
        try:
            async with mcp.running(current):  # MCP over streamable HTTP at /mcp
                yield
        finally:
            await anyio.to_thread.run_sync(reaper.close)
            if owned is not None:
                app.state.backend = None
                await anyio.to_thread.run_sync(owned.close)

    app = FastAPI(
        title="smolbox", version=smolbox.__version__, lifespan=lifespan,
        description="Disposable microVM sandboxes. Every error body is "
                    "`{\"error\": {code, message, details, help, retryable}}`.",
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.workers = MachineWorkers(settings.max_calls_per_machine,
                                       settings.max_machine_threads)
    mcp = McpEndpoint(settings.token)

    def count_by_state() -> dict[str, int]:
        current: LocalBackend | None = app.state.backend
        if current is None:
            return {}
        return dict(Counter(str(r.state) for r in current.engine.list_machines()))

    app.state.metrics = Metrics(count_by_state)
    # Inside the request-context middleware (added after it = outside): a refused body
    # already has its request id.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics,
                       labels=RouteLabels(app))
    error_handlers.install(app)

    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)])
    for module in (machines, commands, files, snapshots):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(shell.router)  # WebSocket: checks the token itself
    app.include_router(health.router)
    e2b.install(app)  # E2B control plane + envd at the root (checks keys/tokens itself)
    app.router.routes.append(Route(MCP_PATH, mcp, methods=["GET", "POST", "DELETE"],
                                   include_in_schema=False))
    return app

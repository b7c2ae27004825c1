"""The MCP server over streamable HTTP at ``/mcp`` of ``smolbox serve``.

Why a raw ASGI endpoint: the MCP session manager serves the protocol itself; this
adds only what the server guarantees everywhere — the bearer token (the same one
as ``/v1``), and a session manager that lives exactly as long as the app's engine.
With auth off (loopback only) the SDK's DNS-rebinding protection stays on. A
session's sandboxes are deleted when the client ends it (``DELETE /mcp``); one that
just goes away leaves them to their lifetime (``create_sandbox``'s ``timeout_s``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from smolbox.mcp.tools import Sandboxes, build_server
from smolbox.sdk.backend import Backend

PATH = "/mcp"


class McpEndpoint:
    """ASGI app for ``/mcp``: check the token, then hand over to the session manager."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._manager: StreamableHTTPSessionManager | None = None
        self._sandboxes: Sandboxes | None = None

    @asynccontextmanager
    async def running(self, backend: Backend) -> AsyncIterator[None]:
        """Serve MCP over ``backend`` for the duration of the block (the app's lifespan)."""
        server, sandboxes = build_server(backend)
        security = None if self._token is None else TransportSecuritySettings(
            enable_dns_rebinding_protection=False)
        server.streamable_http_app(streamable_http_path=PATH, transport_security=security)
        manager = server.session_manager
        async with manager.run():
            self._manager, self._sandboxes = manager, sandboxes
            try:
                yield
            finally:
                self._manager = self._sandboxes = None

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message, "details": {},
                                     "help": None, "retryable": status == 503}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is not None:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, given = header.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self._token.encode()):
                await self._refuse(send, 401, "AUTH_FAILED",
                                   "Missing or invalid bearer token (Authorization: Bearer …)")
                return
        if self._manager is None:
            await self._refuse(send, 503, "UNAVAILABLE", "The MCP endpoint is not running")
            return
        await self._manager.handle_request(scope, receive, send)
        session = dict(scope.get("headers") or []).get(b"mcp-session-id")
        if scope.get("method") == "DELETE" and session and self._sandboxes is not None:
            # The client ended its session: its sandboxes go with it.
            await anyio.to_thread.run_sync(self._sandboxes.cleanup, session.decode("latin-1"))

"""Request ids, metrics and the last-resort 500, for every HTTP request.

Why pure ASGI: it sees streamed responses as they are (BaseHTTPMiddleware
buffers and has cancellation quirks), and it can turn an unexpected exception
into the catalogue's ``INTERNAL_ERROR`` body *with* the request id before
Starlette's plain-text 500 handler would.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smolbox import errormap, errors
from smolbox.server.errors import public_form
from smolbox.server.metrics import Metrics

log = logging.getLogger("smolbox.server")
HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def incoming_request_id(scope: Scope) -> str:
    """The client's X-Request-ID if it is sane (no header injection), else a new one."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _VALID_ID.match(text):
                return text
    return uuid.uuid4().hex


class RouteLabels:
    """The route template (``/v1/machines/{vm}``) of a path, never the raw path, so metric
    labels stay bounded. Templates come from the app's OpenAPI paths (built on first use:
    FastAPI's own route objects do not carry the included routers' prefixes)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> str:
        if self._patterns is None:
            from starlette.routing import compile_path

            self._patterns = [(compile_path(template)[0], template)
                              for template in self._app.openapi()["paths"]]
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, labels: RouteLabels) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message).append(HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception("unhandled error in request %s", rid)
            if response_started:
                raise
            await self._internal_error(send_with_id, rid, exc)
        finally:
            self.metrics.observe(scope["method"], self.labels(scope["path"]), status,
                                 time.perf_counter() - started)

    @staticmethod
    async def _internal_error(send: Send, rid: str, exc: Exception) -> None:
        import json

        # Foreign host errors keep their meaning (a full disk is DISK_SPACE_LOW, see
        # errormap); anything else is a bug whose text stays in the log.
        err = (public_form(errormap.translate(exc)) if isinstance(exc, errormap.FOREIGN)
               else errors.InternalError(f"Unexpected server error ({type(exc).__name__})"))
        err.details["request_id"] = rid
        body = json.dumps(err.to_dict()).encode()
        await send({"type": "http.response.start", "status": err.http_status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

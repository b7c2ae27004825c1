"""A size limit on every request body, enforced before any route reads it.

Why in front of the routes: FastAPI reads a JSON body whole before validating it,
so without a limit a client could make the server buffer (and, in a 422, echo) a
body of any size: four 200 MB bodies took a server to 2 GB RSS. The declared
``Content-Length`` is checked at once (413 without reading a byte), and a body
without one (chunked) is counted as it streams and cut off at the limit. File
uploads (``PUT …/files``) stream to the guest and carry their own, larger limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smolbox import errors
from smolbox.server.errors import error_response

DEFAULT_MAX_BODY_BYTES = 8 << 20


def _streams_itself(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    if scope.get("method") == "POST" and path == "/files":
        return True  # E2B envd upload (server/e2b/filesystem.py): its own upload limit
    return scope.get("method") == "PUT" and path.endswith("/files")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = max_body_bytes

    def _refusal(self, size: int | None) -> errors.PayloadTooLargeError:
        return errors.PayloadTooLargeError(
            f"Request body is larger than the limit of {self.limit} bytes",
            details={"limit_bytes": self.limit, "declared_bytes": size},
            help="Send less data per request; upload files with PUT …/files (streamed).")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streams_itself(scope):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        rid = scope.get("state", {}).get("request_id")
        if declared is not None and declared > self.limit:
            await error_response(self._refusal(declared), rid)(scope, receive, send)
            return
        seen = 0
        too_large = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Stop reading; whatever the route makes of the cut body (FastAPI
                    # answers 400) is replaced by the 413 below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if too_large and message["type"] == "http.response.start" and not replaced:
                replaced = True
                await error_response(self._refusal(None), rid)(scope, receive, send)
                return
            if replaced:
                return  # the route's own answer to the cut body is dropped
            await send(message)

        await self.app(scope, counting_receive, replacing_send)

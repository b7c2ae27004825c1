"""The Connect protocol's JSON flavour, as envd speaks it (server side).

Why hand-written: the real ``e2b`` SDK pins ``connectrpc<0.13`` and
``protobuf-py<0.7``; depending on them would make smolbox's dependencies fight
every E2B user's. The wire format is small (connectrpc.com/docs/protocol):

- unary: ``POST /<service>/<Method>``, ``Content-Type: application/json``, the body
  is the message as proto3 JSON; errors are an HTTP status plus
  ``{"code": "not_found", "message": ...}``;
- streams: ``Content-Type: application/connect+json``, every message in an envelope
  (flags byte, big-endian uint32 length, JSON); the last envelope has flag 0x02 and
  holds the end-of-stream object ``{}`` or ``{"error": {code, message}}``.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from smolbox import errors

UNARY = "application/json"
STREAM = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END = 0x02
HEADER = struct.Struct(">BI")
MAX_MESSAGE = 16 << 20

# Connect error code -> HTTP status of a unary error response (the protocol's table).
HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
    "not_found": 404, "already_exists": 409, "permission_denied": 403,
    "resource_exhausted": 429, "failed_precondition": 400, "aborted": 409,
    "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}
# smolbox error (by HTTP status) -> Connect code, for errors the catalogue raised.
_FROM_STATUS = {
    400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
    404: "not_found", 409: "failed_precondition", 410: "not_found", 413: "resource_exhausted",
    422: "invalid_argument", 429: "resource_exhausted", 501: "unimplemented",
    503: "unavailable", 504: "deadline_exceeded",
}


class ConnectError(Exception):
    """An error answered in Connect's shape (the SDK maps ``code`` to its exceptions)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def from_smolbox(err: errors.SmolboxError) -> ConnectError:
    """The catalogue error as a Connect error; the code and help ride in the message."""
    if err.code == "OPERATION_TIMEOUT":
        code = "deadline_exceeded"
    elif err.code.endswith("ALREADY_EXISTS") or (err.code == "GUEST_FILE_ERROR"
                                                 and "exists" in err.message.lower()):
        code = "already_exists"
    elif err.http_status >= 500 and err.http_status not in _FROM_STATUS:
        code = "internal"
    else:
        code = _FROM_STATUS.get(err.http_status, "unknown")
    text = f"{err.message} [{err.code}]"
    if err.help:
        text += f" {err.help}"
    return ConnectError(code, text)


def unary_response(message: dict[str, Any]) -> Response:
    return JSONResponse(message, media_type=UNARY)


def unary_error(err: ConnectError) -> Response:
    return JSONResponse(err.body(), status_code=HTTP_STATUS.get(err.code, 500),
                        media_type=UNARY)


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(flags, len(data)) + data


def end_of_stream(err: ConnectError | None = None) -> bytes:
    return envelope({"error": err.body()} if err is not None else {}, FLAG_END)


async def unary_request(request: Request) -> dict[str, Any]:
    """The JSON body of a unary call (an empty body is the empty message)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        message = json.loads(raw)
    except ValueError:
        raise ConnectError("invalid_argument", "the request body is not JSON") from None
    if not isinstance(message, dict):
        raise ConnectError("invalid_argument", "the request body is not a JSON object")
    return message


async def stream_messages(request: Request) -> AsyncIterator[dict[str, Any]]:
    """The enveloped messages of a streaming request body, in order."""
    buffer = b""
    async for chunk in request.stream():
        buffer += chunk
        while len(buffer) >= HEADER.size:
            flags, length = HEADER.unpack_from(buffer)
            if length > MAX_MESSAGE:
                raise ConnectError("resource_exhausted", "message larger than 16 MiB")
            if len(buffer) < HEADER.size + length:
                break
            data = buffer[HEADER.size:HEADER.size + length]
            buffer = buffer[HEADER.size + length:]
            if flags & FLAG_COMPRESSED:
                raise ConnectError("unimplemented", "compressed messages are not supported")
            if flags & FLAG_END:
                return
            try:
                message = json.loads(data) if data else {}
            except ValueError:
                raise ConnectError("invalid_argument", "a message is not JSON") from None
            if not isinstance(message, dict):
                raise ConnectError("invalid_argument", "a message is not a JSON object")
            yield message
    if buffer:
        raise ConnectError("invalid_argument", "the request ended inside a message")


def timeout_s(request: Request) -> float | None:
    """The call's deadline from ``Connect-Timeout-Ms``, in seconds (None: none)."""
    value = request.headers.get("connect-timeout-ms", "")
    return int(value) / 1000 if value.isdigit() and int(value) > 0 else None


def b64(data: bytes) -> str:
    """proto3 JSON encodes ``bytes`` fields as standard base64."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_"
                                if ("-" in text or "_" in text) else None)
    except ValueError:
        raise ConnectError("invalid_argument", "a bytes field is not base64") from None

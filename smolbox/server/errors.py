"""Every error response is the catalogue body ``err.to_dict()`` with ``err.http_status``.

Why handlers for FastAPI's own errors too: a client (the RemoteBackend, or a
person with curl) must get the same shape whether the engine refused, the body
failed validation (``VALIDATION_ERROR`` 422) or the route does not exist
(``NOT_FOUND`` 404), so one parser (``errors.from_wire``) handles them all.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smolbox import errors

log = logging.getLogger("smolbox.server")


def request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


# Details that may leave the server in a 5xx body: small facts, never argv, stderr,
# console output or host paths (those go to the server log under the request id).
PUBLIC_5XX_DETAILS = frozenset({
    "request_id", "retry_after", "limit", "allowed", "requested", "vm_id", "id",
    "operation", "timeout_seconds", "step", "snapshot_id", "reason", "cause",
})
_HOST_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*")


def public_form(err: errors.SmolboxError) -> errors.SmolboxError:
    """The error as a client may see it: a 5xx keeps its code and class, loses
    everything that would tell a client the host's paths or command lines."""
    if err.http_status < 500:
        return err
    details = {key: value for key, value in err.details.items()
               if key in PUBLIC_5XX_DETAILS and isinstance(value, int | float | str | None)
               and not (isinstance(value, str) and _HOST_PATH.search(value))}
    return type(err)._rebuild(_HOST_PATH.sub("<path>", err.message), details, err.help)


def error_response(err: errors.SmolboxError, rid: str | None) -> JSONResponse:
    """The one way an error leaves the server (5xx bodies through ``public_form``)."""
    if rid is not None:
        err.details.setdefault("request_id", rid)
    if err.http_status >= 500:
        log.warning("request %s failed: %s details=%s", rid, err, err.details)
        err = public_form(err)
    headers: dict[str, str] = {}
    if isinstance(err, errors.AuthError) and err.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = err.details.get("retry_after")
    if isinstance(retry_after, int | float) and retry_after >= 0:
        headers["Retry-After"] = str(int(retry_after + 0.999))
    return JSONResponse(err.to_dict(), status_code=err.http_status, headers=headers)


def _loc(loc: Any) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _smolbox_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.SmolboxError)
    return error_response(exc, request_id(request))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    field = _loc(first.get("loc", ()))
    err = errors.ValidationError(
        f"Invalid request: {field}: {first.get('msg')}", field=field,
        details={"errors": [{"field": _loc(p.get("loc", ())), "message": p.get("msg"),
                             "type": p.get("type")} for p in problems]},
        help="Fix the fields named in `details.errors`; the schema is at /openapi.json.")
    return error_response(err, request_id(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err: errors.SmolboxError = errors.NotFoundError(
            f"No such route: {request.method} {request.url.path}",
            help="Routes live under /v1; see /docs or /openapi.json.")
    else:
        err = errors.error_for_status(exc.status_code)(
            f"{request.method} {request.url.path}: {exc.detail}")
    return error_response(err, request_id(request))


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.SmolboxError, _smolbox_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

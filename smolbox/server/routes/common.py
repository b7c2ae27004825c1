"""OpenAPI response documentation shared by the routes: every error is an ErrorEnvelope."""

from __future__ import annotations

from typing import Any

from smolbox.sdk.models import ErrorEnvelope

_ERROR: dict[str, Any] = {"model": ErrorEnvelope}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {**_ERROR, "description": text} for status, text in {
        400: "Bad request (e.g. a guest file error)",
        401: "Missing or invalid bearer token",
        404: "Machine, snapshot or guest file not found",
        408: "The operation timed out",
        409: "Conflict with the machine's state",
        413: "Body larger than the server's limit",
        422: "Validation error",
        500: "Engine or server error",
        501: "Not supported",
        503: "Temporarily unavailable",
    }.items()
}

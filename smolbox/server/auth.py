"""Bearer-token auth for every ``/v1`` route (constant-time comparison).

Why a dependency rather than middleware: FastAPI then documents the security
scheme in the OpenAPI document, so clients (and schemathesis) know to send it.
"""

from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from smolbox import errors

bearer = HTTPBearer(
    auto_error=False,
    description="The token `smolbox serve` printed (stored in $SMOLBOX_HOME/server.token).",
)


async def require_token(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    expected: str | None = request.app.state.settings.token
    if expected is None:
        return
    if credentials is None:
        raise errors.AuthError("Missing bearer token (Authorization: Bearer <token>)")
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise errors.AuthError("Invalid bearer token")

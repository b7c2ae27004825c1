"""Who may talk to which sandbox: the API key, per-sandbox envd tokens, routing.

Why HMAC tokens: each sandbox's ``envdAccessToken`` is derived from the server's
token and the sandbox id, so it is the same after a server restart without being
stored, cannot be guessed without the server token, and a token for one sandbox
opens no other. With auth off (``--no-auth``) no token is minted or checked.

Routing: E2B clients reach envd either at ``E2B_SANDBOX_URL`` with the
``E2b-Sandbox-Id`` header, or by host name ``<port>-<sandboxID>.<domain>``
(``E2B_DOMAIN``); both are read here.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from fastapi import Request

from smolbox.server.settings import ServerSettings

ENVD_PORT = 49983
_HOST = re.compile(r"^(?P<port>\d+)-(?P<id>[A-Za-z0-9_-]+)\.")


class AccessDenied(Exception):
    """A refused key or token; the route answers in its protocol's shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def settings_of(request: Request) -> ServerSettings:
    value: ServerSettings = request.app.state.settings
    return value


def check_api_key(request: Request) -> None:
    """The control plane's ``X-API-KEY`` must be the server token."""
    expected = settings_of(request).token
    if expected is None:
        return
    given = request.headers.get("x-api-key") or ""
    if not given:
        raise AccessDenied(401, "Missing API key (X-API-KEY); use the smolbox server token")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AccessDenied(401, "Invalid API key")


def envd_token(settings: ServerSettings, sandbox_id: str) -> str | None:
    """The sandbox's envd access token (None with auth off)."""
    if settings.token is None:
        return None
    digest = hmac.new(settings.token.encode(), f"envd:{sandbox_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:40]


def sandbox_of(request: Request) -> str:
    """The sandbox a data-plane request is for (header first, then the Host name)."""
    header = request.headers.get("e2b-sandbox-id")
    if header:
        return header
    match = _HOST.match(request.headers.get("host", ""))
    if match:
        return match.group("id")
    raise AccessDenied(400, "No sandbox named: send E2b-Sandbox-Id or use "
                            "<port>-<sandboxID>.<domain> as the host")


def check_envd_token(request: Request, sandbox_id: str) -> None:
    """``X-Access-Token`` must be the token minted for ``sandbox_id``."""
    expected = envd_token(settings_of(request), sandbox_id)
    if expected is None:
        return
    given = request.headers.get("x-access-token") or ""
    if not given:
        raise AccessDenied(401, "Missing envd access token (X-Access-Token)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AccessDenied(401, "Invalid envd access token")

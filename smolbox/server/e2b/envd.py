"""What every envd endpoint does first: find the sandbox, check its token, pick the user.

Why one place: the process and filesystem services and the plain HTTP file routes
all resolve the sandbox the same way (header or Host), refuse a missing or wrong
``X-Access-Token`` the same way, and act as the same guest user — E2B's default
``user`` unless the request names another through ``Authorization: Basic``.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import Request, Response

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.sdk.local import LocalBackend
from smolbox.server.deps import backend
from smolbox.server.e2b import connect as c
from smolbox.server.e2b.access import AccessDenied, check_envd_token, sandbox_of

DEFAULT_USER = "user"


@dataclass(frozen=True)
class EnvdContext:
    """One envd request's sandbox, engine and guest user."""

    sandbox_id: str
    backend: LocalBackend
    user: str

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    @property
    def home(self) -> str:
        return "/root" if self.user == "root" else f"/home/{self.user}"

    def path(self, path: str) -> str:
        """E2B paths may be relative to the user's home; guest paths are absolute."""
        path = path or self.home
        if path.startswith("~"):
            path = self.home + path[1:]
        if not path.startswith("/"):
            path = posixpath.join(self.home, path)
        return posixpath.normpath(path) if path != "/" else path


def basic_user(request: Request) -> str | None:
    """The user named by ``Authorization: Basic base64("<user>:")`` (None: not sent)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name = decoded.split(":", 1)[0]
    return name or None


def context(request: Request, user: str | None = None) -> EnvdContext:
    """Resolve and authorise the request (raises ``AccessDenied``)."""
    sandbox_id = sandbox_of(request)
    check_envd_token(request, sandbox_id)
    return EnvdContext(sandbox_id=sandbox_id, backend=backend(request),
                       user=user or basic_user(request) or DEFAULT_USER)


#: What an envd RPC can fail with before or while it runs; see :func:`connect_error`.
RPC_FAILURES = (AccessDenied, c.ConnectError, errors.SmolboxError)


def connect_error(failure: AccessDenied | c.ConnectError | errors.SmolboxError
                  ) -> c.ConnectError:
    """A failure of an envd RPC in Connect's terms (what the e2b SDK turns into its own
    exceptions): a refused token is ``unauthenticated``, a catalogue error is mapped."""
    if isinstance(failure, AccessDenied):
        return c.ConnectError("unauthenticated", failure.message)
    if isinstance(failure, c.ConnectError):
        return failure
    return c.from_smolbox(failure)


async def unary(request: Request,
                work: Callable[[EnvdContext, dict[str, Any]], dict[str, Any]]) -> Response:
    """One unary Connect call of either envd service: authorise, decode, run ``work``
    in a worker thread, and answer every failure in Connect's error shape."""
    try:
        ctx = context(request)
        message = await c.unary_request(request)
        return c.unary_response(await anyio.to_thread.run_sync(work, ctx, message))
    except RPC_FAILURES as failure:
        return c.unary_error(connect_error(failure))

"""Backends for the SDK tests: the embedded engine, and a real server on loopback.

Both share the session engine, so the remote side adds no machines of its own and
the QEMU count stays low. The server is real uvicorn on 127.0.0.1 (free port)
in a thread; the client is real httpx.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from smolbox.engine.engine import Engine
from smolbox.sdk import LocalBackend, RemoteBackend
from smolbox.sdk.backend import Backend
from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture(scope="session")
def server_token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def sdk_server(engine: Engine, server_token: str) -> Iterator[ServerThread]:
    app = create_app(ServerSettings(token=server_token), engine=engine)
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module", params=["local", "remote"])
def backend(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Backend]:
    """The parametrized backend: every test using it runs on both."""
    if request.param == "local":
        yield LocalBackend(engine)
        return
    server: ServerThread = request.getfixturevalue("sdk_server")
    token: str = request.getfixturevalue("server_token")
    remote = RemoteBackend(server.url, token=token)
    yield remote
    remote.close()

"""A real server on loopback (uvicorn in a thread, its own engine) and an httpx client."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def server(token: str) -> Iterator[ServerThread]:
    with ServerThread(create_app(ServerSettings(token=token))) as running:
        yield running


@pytest.fixture
def client(server: ServerThread, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


@pytest.fixture
def anonymous(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url) as http:
        yield http

"""Fixtures: the real ``e2b`` SDK in its own virtualenv and a real smolbox server for it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b_harness import E2BServer, ensure_e2b_venv

from smolbox.engine.engine import Engine
from smolbox.paths import Paths
from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture(scope="session")
def e2b_python() -> Path:
    return ensure_e2b_venv(Paths.from_env().cache)


@pytest.fixture(scope="module")
def e2b_server(engine: Engine, e2b_python: Path) -> Iterator[E2BServer]:
    token = secrets.token_urlsafe(16)
    with ServerThread(create_app(ServerSettings(token=token), engine)) as running:
        yield E2BServer(url=running.url, token=token, engine=engine, python=e2b_python)

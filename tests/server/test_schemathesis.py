"""Property-based checks of the served OpenAPI document against the real server.

Schemathesis generates requests from ``/openapi.json`` and checks every response:
no 5xx, documented status codes and content types, bodies matching their schema.
The server runs on its own empty smolbox home, so generated names can never hit
another test's machine; operations that would boot machines are left out (they
are covered, on real VMs, by tests/sdk).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from smolbox.engine.engine import Engine
from smolbox.paths import Paths
from smolbox.server import ServerSettings, ServerThread, create_app

TOKEN = secrets.token_urlsafe(16)
BOOTS_MACHINES = r"^/v1/(machines|snapshots/\{name\}/fork|machines/\{vm\}/(start|restart|restore"\
                 r"|snapshots))$"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    shared = Paths.from_env()
    run = Path(tempfile.mkdtemp(prefix="sbxz-"))
    paths = Paths(home=tmp_path_factory.mktemp("fuzz-home"), images=shared.images,
                  cache=shared.cache, run=run)
    engine = Engine(paths)
    try:
        with ServerThread(create_app(ServerSettings(token=TOKEN), engine=engine)) as server:
            yield server
    finally:
        engine.close()
        shutil.rmtree(run, ignore_errors=True)


def test_api_conforms_to_its_schema(fuzz_server: ServerThread) -> None:
    """Every documented operation, positive and negative inputs, a few dozen cases each.

    (Driven through Hypothesis directly: schemathesis' lazy pytest fixture loader
    does not work with pytest 9.)
    """
    loaded = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    schema = loaded.exclude(method="POST", path_regex=BOOTS_MACHINES).exclude(path="/readyz")
    tried: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        tried.append(operation.label)
        check_operation(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        # Some operations have nothing that can be made invalid (e.g. GET /healthz).
        with contextlib.suppress(Unsatisfiable):
            check_operation(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    assert "GET /v1/machines/{vm}" in tried and "PUT /v1/machines/{vm}/files/content" in tried
    assert not any(label.startswith("POST /v1/machines ") or label == "POST /v1/machines"
                   for label in tried)


def check_operation(strategy: st.SearchStrategy[schemathesis.Case[Any]]) -> None:
    @given(case=strategy)
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"},
            checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                    response_schema_conformance],
        )

    run()

"""The REST surface without VMs: auth, error bodies, request ids, health, metrics, spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.paths import Paths
from smolbox.server import ServerSettings, ServerThread, create_app, load_or_create_token


def assert_catalogue(response: httpx.Response,
                     cls: type[errors.SmolboxError]) -> dict[str, Any]:
    """The body is exactly the catalogue shape, status the class's, and it parses back."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "help", "retryable"}
    assert body["error"]["code"] == cls.code
    assert response.status_code == cls.http_status
    assert type(errors.from_wire(body)) is cls
    assert body["error"]["details"]["request_id"] == response.headers["X-Request-ID"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/machines"), ("POST", "/v1/machines"), ("GET", "/v1/snapshots"),
    ("POST", "/v1/machines/x/exec"), ("GET", "/metrics"),
])
def test_requests_without_token_get_401(anonymous: httpx.Client, method: str,
                                        path: str) -> None:
    response = anonymous.request(method, path, json={})
    error = assert_catalogue(response, errors.AuthError)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in error["message"]


def test_wrong_token_gets_401(anonymous: httpx.Client) -> None:
    response = anonymous.get("/v1/machines", headers={"Authorization": "Bearer nope"})
    assert assert_catalogue(response, errors.AuthError)["message"] == "Invalid bearer token"


def test_unknown_route_is_catalogue_not_found(client: httpx.Client) -> None:
    error = assert_catalogue(client.get("/v1/nothing-here"), errors.NotFoundError)
    assert "/v1/nothing-here" in error["message"]


def test_missing_machine_is_vm_not_found(client: httpx.Client) -> None:
    error = assert_catalogue(client.get("/v1/machines/ghost"), errors.VMNotFoundError)
    assert error["details"]["vm_id"] == "ghost"
    assert_catalogue(client.post("/v1/machines/ghost/exec", json={"cmd": "true"}),
                     errors.VMNotFoundError)
    assert_catalogue(client.get("/v1/machines/ghost/files/content", params={"path": "/x"}),
                     errors.VMNotFoundError)
    assert_catalogue(client.get("/v1/snapshots/ghost"), errors.SnapshotNotFoundError)


def test_request_validation_is_validation_error(client: httpx.Client) -> None:
    error = assert_catalogue(client.post("/v1/machines", json={"memroy_mib": 512}),
                             errors.ValidationError)
    assert error["details"]["field"] == "memroy_mib"  # same field names as the SDK
    error = assert_catalogue(client.post("/v1/machines", json={"memory_mib": 1}),
                             errors.ValidationError)
    assert error["details"]["field"] == "memory_mib"
    assert_catalogue(client.post("/v1/machines/x/exec", json={"cmd": []}),
                     errors.ValidationError)
    assert_catalogue(client.post("/v1/machines/x/exec", content=b"not json",
                                 headers={"Content-Type": "application/json"}),
                     errors.ValidationError)
    error = assert_catalogue(client.get("/v1/machines/x/files/stat",
                                        params={"path": "relative"}), errors.ValidationError)
    assert error["details"]["field"] == "query.path"


def test_upload_over_declared_limit_is_refused_before_reading(
        server: object, token: str) -> None:
    from smolbox.server import ServerSettings, ServerThread, create_app

    app = create_app(ServerSettings(token=token, max_upload_bytes=10))
    with ServerThread(app) as small, httpx.Client(base_url=small.url) as http:
        response = http.put("/v1/machines/any/files/content", params={"path": "/f"},
                            content=b"x" * 11, headers={"Authorization": f"Bearer {token}"})
    error = assert_catalogue(response, errors.PayloadTooLargeError)
    assert error["details"]["limit_bytes"] == 10


def test_request_ids_are_echoed_generated_and_sanitised(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
        "X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    bad = client.get("/healthz", headers={"X-Request-ID": "evil\tvalue"})
    assert bad.headers["X-Request-ID"] != "evil\tvalue"
    response = client.get("/v1/machines/ghost", headers={"X-Request-ID": "trace-7"})
    assert response.json()["error"]["details"]["request_id"] == "trace-7"


def test_readiness_is_refused_without_the_default_image(tmp_path: Path) -> None:
    """A home with no image installed: live, but not ready (and it says why)."""
    paths = Paths(home=tmp_path / "home", images=tmp_path / "images",
                  cache=tmp_path / "cache", run=tmp_path / "run")
    with Engine(paths) as engine, ServerThread(create_app(ServerSettings(token=None),
                                                          engine=engine)) as server:
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        error = assert_catalogue(httpx.get(server.url + "/readyz"), errors.UnavailableError)
        assert error["details"]["cause"] == "IMAGE_NOT_FOUND"


@pytest.mark.vm
def test_readiness_with_the_default_image_reports_the_load(default_image: object,
                                                           anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["machine_threads_in_use"] == 0 and body["busy_machines"] == 0


def test_metrics_count_requests_by_route(client: httpx.Client) -> None:
    client.get("/v1/machines/ghost")
    text = client.get("/metrics").text
    assert 'smolbox_http_requests_total{method="GET",route="/v1/machines/{vm}",status="404"}' \
        in text
    assert "smolbox_http_request_duration_seconds_bucket" in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_openapi_documents_v1_and_bearer_auth(anonymous: httpx.Client) -> None:
    spec = anonymous.get("/openapi.json").json()
    paths = set(spec["paths"])
    for path in ("/v1/machines", "/v1/machines/{vm}", "/v1/machines/{vm}/exec",
                 "/v1/machines/{vm}/exec/stream", "/v1/machines/{vm}/files/content",
                 "/v1/snapshots/{name}/fork", "/healthz", "/readyz", "/metrics"):
        assert path in paths
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    create = spec["paths"]["/v1/machines"]["post"]
    assert create["security"] == [{"HTTPBearer": []}]
    assert "ErrorEnvelope" in str(create["responses"]["404"])


def test_token_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "server.token"
    first = load_or_create_token(path)
    assert len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(errors.HostError) as caught:
        load_or_create_token(path)
    assert "chmod 600" in caught.value.help



def test_wrong_method_is_a_catalogue_405(client: httpx.Client) -> None:
    assert_catalogue(client.patch("/v1/machines"), errors.MethodNotAllowedError)

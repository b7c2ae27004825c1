"""Streaming over HTTP on a real machine: SSE exec frames, upload/download limits, logs.

The machine is created and deleted through the API itself (POST/DELETE
/v1/machines), on a server sharing the session engine with small size limits.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.server import ServerSettings, ServerThread, create_app

pytestmark = pytest.mark.vm
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def http(engine: Engine) -> Iterator[httpx.Client]:
    token = secrets.token_urlsafe(16)
    app = create_app(ServerSettings(token=token, max_upload_bytes=LIMIT,
                                    max_download_bytes=LIMIT), engine=engine)
    with ServerThread(app) as server, httpx.Client(
            base_url=server.url + "/v1", headers={"Authorization": f"Bearer {token}"},
            timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def vm(http: httpx.Client) -> Iterator[str]:
    created = http.post("/machines", json={"name": "api-streams"})
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "running"
    yield "api-streams"
    assert http.delete("/machines/api-streams", params={"force": True}).status_code == 204
    assert http.get("/machines/api-streams").json()["error"]["code"] == "VM_NOT_FOUND"


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_exec_stream_is_server_sent_events(http: httpx.Client, vm: str) -> None:
    with http.stream("POST", f"/machines/{vm}/exec/stream",
                     json={"cmd": "echo out; echo err >&2; exit 5"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Request-ID"]
        events = sse_events(response)
    kinds = [name for name, _ in events]
    assert kinds[-1] == "exit" and events[-1][1]["exit_code"] == 5
    assert {"stdout", "stderr"} <= set(kinds)


def test_exec_stream_timeout_ends_with_error_event(http: httpx.Client, vm: str) -> None:
    with http.stream("POST", f"/machines/{vm}/exec/stream",
                     json={"cmd": "echo started; sleep 30", "timeout": 1}) as response:
        events = sse_events(response)
    name, body = events[-1]
    assert name == "error"
    assert isinstance(errors.from_wire(body), errors.OperationTimeoutError)


def test_exec_stream_on_missing_machine_is_plain_404(http: httpx.Client) -> None:
    response = http.post("/machines/ghost/exec/stream", json={"cmd": "true"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "VM_NOT_FOUND"


def test_chunked_upload_over_limit_is_refused_and_leaves_nothing(http: httpx.Client,
                                                                 vm: str) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the limit is enforced as bytes arrive
        for _ in range(2):  # the last chunk crosses the limit (so the client is done sending)
            yield b"x" * (LIMIT // 2 + 1)

    response = http.put(f"/machines/{vm}/files/content", params={"path": "/tmp/big"},
                        content=body())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert response.json()["error"]["details"]["limit_bytes"] == LIMIT
    missing = http.get(f"/machines/{vm}/files/stat", params={"path": "/tmp/big"})
    assert missing.json()["error"]["code"] == "GUEST_FILE_NOT_FOUND"


def test_upload_and_download_stream_within_limit(http: httpx.Client, vm: str) -> None:
    data = bytes(range(256)) * 1024
    put = http.put(f"/machines/{vm}/files/content", params={"path": "/tmp/ok.bin",
                                                             "mode": 0o600}, content=data)
    assert put.status_code == 204, put.text
    got = http.get(f"/machines/{vm}/files/content", params={"path": "/tmp/ok.bin"})
    assert got.content == data
    assert got.headers["X-Smolbox-File-Size"] == str(len(data))


def test_download_over_limit_and_of_directory_are_refused(http: httpx.Client,
                                                          vm: str) -> None:
    run = http.post(f"/machines/{vm}/exec",
                    json={"cmd": f"head -c {LIMIT + 1} /dev/zero > /tmp/huge"})
    assert run.json()["exit_code"] == 0
    big = http.get(f"/machines/{vm}/files/content", params={"path": "/tmp/huge"})
    assert big.status_code == 413 and big.json()["error"]["details"]["limit_bytes"] == LIMIT
    folder = http.get(f"/machines/{vm}/files/content", params={"path": "/tmp"})
    assert folder.json()["error"]["code"] == "GUEST_FILE_ERROR"


def test_exec_json_and_bad_stdin(http: httpx.Client, vm: str) -> None:
    ok = http.post(f"/machines/{vm}/exec", json={"cmd": ["cat"], "stdin_b64": "aGk="})
    assert ok.json()["stdout"] == "hi"
    bad = http.post(f"/machines/{vm}/exec", json={"cmd": ["cat"], "stdin_b64": "é"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"


def test_logs_and_metrics_see_the_machine(http: httpx.Client, vm: str) -> None:
    http.post(f"/machines/{vm}/exec", json={"cmd": "echo via-api > /dev/console"})
    assert "via-api" in http.get(f"/machines/{vm}/logs").text
    metrics = httpx.get(str(http.base_url).removesuffix("/v1/") + "/metrics",
                        headers=dict(http.headers)).text
    assert 'smolbox_machines{state="running"}' in metrics

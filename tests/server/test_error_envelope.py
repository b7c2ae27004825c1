"""The server's error envelope for an unexpected bug, the remote client's transport
errors (timeout, unreachable server, shell WebSocket) and constant-time token checks.

Real servers on loopback throughout; the one fake is the engine that injects a bug.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_engine import FakeExplodingEngine
from websockets.sync.client import connect

from smolbox import errors
from smolbox.sdk.remote import RemoteBackend
from smolbox.sdk.remote_shell import RemoteShell
from smolbox.sdk.retry import RetryPolicy
from smolbox.server import ServerSettings, ServerThread, create_app
from smolbox.server import auth as server_auth
from smolbox.server.routes import shell as shell_route

ONE_TRY = RetryPolicy(max_attempts=1)


def test_an_unexpected_bug_becomes_the_internal_error_envelope() -> None:
    app = create_app(ServerSettings(token=None), engine=FakeExplodingEngine())  # type: ignore[arg-type]
    with ServerThread(app) as running, httpx.Client(base_url=running.url) as http:
        response = http.get("/v1/machines")
        with pytest.raises(errors.InternalError):  # and the SDK rebuilds the class
            RemoteBackend(running.url, retry=ONE_TRY).list()
    assert response.status_code == 500
    body = response.json()["error"]
    assert body["code"] == "INTERNAL_ERROR"
    assert body["message"] == "Unexpected server error (RuntimeError)"
    assert "injected bug" not in response.text  # no internals leak to the client
    assert body["details"]["request_id"] == response.headers["x-request-id"]
    assert set(body) >= {"code", "message", "details", "help", "retryable"}


@pytest.fixture
def mute_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    worker = threading.Thread(target=accept, daemon=True)
    worker.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    worker.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_server_that_never_answers_is_a_request_timeout(mute_server: str) -> None:
    backend = RemoteBackend(mute_server, retry=ONE_TRY, timeout=httpx.Timeout(0.5))
    with pytest.raises(errors.RequestTimeoutError) as caught:
        backend.list()
    assert caught.value.code == "REQUEST_TIMEOUT"
    assert isinstance(caught.value, errors.OperationTimeoutError)
    assert caught.value.details["operation"] == "GET /machines"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(errors.ConnectionError) as caught:
        RemoteBackend(url, retry=ONE_TRY).list()
    assert caught.value.details["url"] == url


def test_a_shell_websocket_that_cannot_open_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(errors.ConnectionError) as caught:
        RemoteShell.open(url, "box", token=None, command=None, rows=24, cols=80)
    assert "Cannot open a shell WebSocket" in caught.value.message


class _CompareSpy:
    """Records the arguments of ``secrets.compare_digest`` and delegates to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.real = secrets.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _CompareSpy:
    recorder = _CompareSpy()
    for module in (server_auth, shell_route):
        monkeypatch.setattr(module.secrets, "compare_digest", recorder)
    return recorder


def test_tokens_are_compared_in_constant_time(spy: _CompareSpy) -> None:
    """Both token checks (REST and the shell WebSocket) go through compare_digest,
    never ``==``: a wrong token must not be found out byte by byte."""
    token = secrets.token_urlsafe(16)
    app = create_app(ServerSettings(token=token), engine=FakeExplodingEngine())  # type: ignore[arg-type]
    with ServerThread(app) as running, httpx.Client(base_url=running.url) as http:
        wrong = http.get("/v1/machines", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "AUTH_FAILED"
        assert (b"not-the-token", token.encode()) in spy.calls
        spy.calls.clear()
        ws_url = "ws" + running.url.removeprefix("http") + "/v1/machines/box/shell"
        with connect(ws_url, additional_headers={"Authorization": "Bearer ws-wrong"},
                     open_timeout=10) as ws:
            frame = ws.recv(timeout=10)
        assert "AUTH" in str(frame)
        assert (b"ws-wrong", token.encode()) in spy.calls

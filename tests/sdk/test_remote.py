"""RemoteBackend specifics: retries, error mapping, auth, what it cannot serve.

The server is real (uvicorn on loopback, with its own engine; no VMs here). Failures a real
server does not produce on demand (a 503 from a proxy, then success) come from
``FlakyTransport``, which answers the first N requests itself and forwards the
rest to the real server over a real HTTP transport.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import httpx
import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.sdk import Machine, RemoteBackend, RetryPolicy
from smolbox.sdk.retry import parse_retry_after
from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture(scope="module")
def server_token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def sdk_server(server_token: str) -> Iterator[ServerThread]:
    """A server that opens (and at shutdown closes) its own engine: no image needed."""
    with ServerThread(create_app(ServerSettings(token=server_token))) as server:
        yield server


class FlakyTransport(httpx.BaseTransport):
    """Answer the first ``failures`` requests with ``status``; forward the rest."""

    def __init__(self, failures: int, status: int, *, headers: dict[str, str] | None = None,
                 body: bytes = b"<html>bad gateway</html>") -> None:
        self.inner = httpx.HTTPTransport()
        self.failures = failures
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.seen: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        if self.failures > 0:
            self.failures -= 1
            return httpx.Response(self.status, headers=self.headers, content=self.body)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def remote(server: ServerThread, token: str, transport: httpx.BaseTransport | None = None,
           **policy: object) -> tuple[RemoteBackend, Sleeps]:
    sleeps = Sleeps()
    retry = RetryPolicy(sleep=sleeps, jitter=0.0, **policy)  # type: ignore[arg-type]
    return RemoteBackend(server.url, token=token, retry=retry, transport=transport), sleeps


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, "7") == 7.0
    assert RetryPolicy(max_retry_after=5.0).delay(1, "120") == 5.0
    assert RetryPolicy(respect_retry_after=False, jitter=0.0).delay(1, "120") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_idempotent_get_retries_503_then_succeeds(sdk_server: ServerThread,
                                                  server_token: str) -> None:
    flaky = FlakyTransport(2, 503, headers={"Retry-After": "2"})
    backend, sleeps = remote(sdk_server, server_token, flaky)
    with backend:
        assert isinstance(backend.list(), list)
    assert sleeps == [2.0, 2.0]  # Retry-After honoured
    assert flaky.seen == ["GET /v1/machines"] * 3


def test_retries_stop_at_max_attempts_with_family_error(sdk_server: ServerThread,
                                                        server_token: str) -> None:
    flaky = FlakyTransport(10, 502)
    backend, sleeps = remote(sdk_server, server_token, flaky, max_attempts=3,
                             backoff_base=0.1)
    with backend, pytest.raises(errors.UnavailableError) as caught:
        backend.list_snapshots()
    assert caught.value.details["status"] == 502  # no smolbox body: error_for_status
    assert sleeps == [0.1, 0.2]
    assert len(flaky.seen) == 3


def test_non_idempotent_calls_are_not_retried(sdk_server: ServerThread,
                                              server_token: str) -> None:
    body = errors.UnavailableError("engine busy").to_dict()
    flaky = FlakyTransport(1, 503, body=httpx.Response(200, json=body).content,
                           headers={"Content-Type": "application/json"})
    backend, sleeps = remote(sdk_server, server_token, flaky)
    with backend, pytest.raises(errors.UnavailableError) as caught:
        backend.create(MachineConfig(name="never-made"))
    assert caught.value.message == "engine busy"
    assert sleeps == [] and len(flaky.seen) == 1


def test_429_is_rate_limited_error(sdk_server: ServerThread, server_token: str) -> None:
    flaky = FlakyTransport(5, 429, headers={"Retry-After": "1"})
    backend, sleeps = remote(sdk_server, server_token, flaky, max_attempts=2)
    with backend, pytest.raises(errors.RateLimitedError):
        backend.list()
    assert sleeps == [1.0]


def test_connection_refused_is_retried_then_connection_error(server_token: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    backend = RemoteBackend(f"http://127.0.0.1:{port}", token=server_token,
                            retry=RetryPolicy(sleep=sleeps, max_attempts=3, jitter=0.0))
    with backend, pytest.raises(errors.ConnectionError) as caught:
        backend.list()
    assert caught.value.details["url"] == f"http://127.0.0.1:{port}"
    assert caught.value.retryable and "SMOLBOX_URL" in caught.value.help
    assert len(sleeps) == 2


def test_wrong_token_is_auth_error(sdk_server: ServerThread) -> None:
    with RemoteBackend(sdk_server.url, token="wrong") as backend, \
            pytest.raises(errors.AuthError) as caught:
        backend.list()
    assert caught.value.code == "AUTH_FAILED"
    assert "request_id" in caught.value.details


def test_url_from_environment(sdk_server: ServerThread, server_token: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLBOX_URL", sdk_server.url)
    monkeypatch.setenv("SMOLBOX_TOKEN", server_token)
    with RemoteBackend() as backend:
        assert backend.url == sdk_server.url
        assert isinstance(backend.list(), list)
    assert isinstance(Machine.list(url=sdk_server.url, token=server_token), list)
    monkeypatch.delenv("SMOLBOX_URL")
    with pytest.raises(errors.ValidationError) as caught:
        RemoteBackend()
    assert caught.value.details["field"] == "url"


def test_remote_shell_errors_are_typed(sdk_server: ServerThread, server_token: str) -> None:
    with RemoteBackend(sdk_server.url, token=server_token) as backend:
        with pytest.raises(errors.VMNotFoundError) as missing:
            backend.shell("no-such-machine")
        assert missing.value.details["request_id"]
        with pytest.raises(errors.NotSupportedError) as caught:
            backend.shell("any", env={"A": "1"})
        assert caught.value.details["operation"] == "shell"
    with RemoteBackend(sdk_server.url, token="wrong") as backend, \
            pytest.raises(errors.AuthError):
        backend.shell("any")

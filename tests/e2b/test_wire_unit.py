"""The E2B door's wire pieces without a VM: Connect envelopes, error mapping, routing,
tokens and the user header."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import pytest
from starlette.requests import Request

from smolbox import errors
from smolbox.server.e2b import connect as c
from smolbox.server.e2b.access import AccessDenied, envd_token, sandbox_of
from smolbox.server.e2b.envd import EnvdContext, basic_user
from smolbox.server.settings import ServerSettings


def request(headers: dict[str, str], body: bytes = b"") -> Request:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/",
                             "headers": [(k.lower().encode(), v.encode())
                                         for k, v in headers.items()]}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_envelopes_round_trip_and_end_of_stream() -> None:
    first = c.envelope({"event": {"start": {"pid": 7}}})
    assert first[0] == 0 and int.from_bytes(first[1:5], "big") == len(first) - 5
    end = c.end_of_stream(c.ConnectError("not_found", "gone"))
    assert end[0] == c.FLAG_END
    assert json.loads(end[5:]) == {"error": {"code": "not_found", "message": "gone"}}
    assert json.loads(c.end_of_stream()[5:]) == {}

    async def read() -> list[dict[str, Any]]:
        body = first + c.envelope({"b": 1}) + c.end_of_stream()
        return [m async for m in c.stream_messages(request({}, body))]

    assert anyio.run(read) == [{"event": {"start": {"pid": 7}}}, {"b": 1}]


def test_a_cut_envelope_is_refused() -> None:
    async def read() -> None:
        async for _ in c.stream_messages(request({}, c.envelope({"a": 1})[:-2])):
            pass

    with pytest.raises(c.ConnectError) as caught:
        anyio.run(read)
    assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize(("err", "code"), [
    (errors.VMNotFoundError("sbx-x"), "not_found"),
    (errors.GuestFileNotFoundError("stat: /a: missing", path="/a"), "not_found"),
    (errors.ValidationError("bad", field="x", value=1), "invalid_argument"),
    (errors.OperationTimeoutError("exec", 3.0), "deadline_exceeded"),
    (errors.NotSupportedError("no", operation="x", reason="y"), "unimplemented"),
])
def test_catalogue_errors_map_to_connect_codes(err: errors.SmolboxError, code: str) -> None:
    mapped = c.from_smolbox(err)
    assert mapped.code == code and f"[{err.code}]" in mapped.message
    assert c.HTTP_STATUS[mapped.code] >= 400


def test_sandbox_from_header_or_host() -> None:
    assert sandbox_of(request({"E2b-Sandbox-Id": "sbx-1"})) == "sbx-1"
    assert sandbox_of(request({"Host": "49983-sbx-2.example.test"})) == "sbx-2"
    with pytest.raises(AccessDenied):
        sandbox_of(request({"Host": "127.0.0.1:7777"}))


def test_envd_tokens_are_per_sandbox_and_stable() -> None:
    settings = ServerSettings(token="server-secret")
    one = envd_token(settings, "sbx-1")
    assert one == envd_token(ServerSettings(token="server-secret"), "sbx-1")
    assert one != envd_token(settings, "sbx-2") and one is not None and "server" not in one
    assert envd_token(ServerSettings(token=None), "sbx-1") is None


def test_user_header_and_paths() -> None:
    header = "Basic " + base64.b64encode(b"root:").decode()
    assert basic_user(request({"Authorization": header})) == "root"
    assert basic_user(request({})) is None
    ctx = EnvdContext(sandbox_id="sbx-1", backend=None, user="user")  # type: ignore[arg-type]
    assert ctx.path("a/b.txt") == "/home/user/a/b.txt"
    assert ctx.path("~/x") == "/home/user/x" and ctx.path("/etc/../tmp") == "/tmp"
    assert ctx.path("") == "/home/user"

"""The MCP endpoint of ``smolbox serve`` (streamable HTTP at /mcp), real server on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, str]]:
    token = secrets.token_urlsafe(16)
    with ServerThread(create_app(ServerSettings(token=token))) as running:
        yield running.url, token


async def _talk(url: str, token: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=60) as http, \
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        missing = await session.call_tool("delete_sandbox", {"sandbox": "sbx-nothere"})
        seen["missing"] = (missing.is_error,
                           "".join(getattr(p, "text", "") for p in missing.content))
    return seen


def test_mcp_over_http_lists_tools_and_codes_errors(served: tuple[str, str]) -> None:
    url, token = served
    seen = anyio.run(_talk, url, token)
    assert "run_command" in seen["tools"] and "create_sandbox" in seen["tools"]
    is_error, text = seen["missing"]
    assert is_error and "[VM_NOT_FOUND]" in text, text


def test_mcp_over_http_needs_the_token(served: tuple[str, str]) -> None:
    url, _ = served
    refused = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                         headers={"Accept": "application/json, text/event-stream"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "AUTH_FAILED"

"""``smolbox mcp`` driven by the official ``mcp`` client over stdio, with a real VM."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from smolbox.engine.engine import Engine

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(900)]


def _text(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


async def _session_run() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMOLBOX_URL", "SMOLBOX_TOKEN")}
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "smolbox.cli.main", "mcp"], env=env)
    seen: dict[str, Any] = {"progress": []}

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen["progress"].append(message)

    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)

        missing = await session.call_tool("run_command", {"sandbox": "sbx-nothere",
                                                          "command": "true"})
        seen["missing"] = (missing.is_error, _text(missing))

        made = await session.call_tool("create_sandbox", {})
        assert not made.is_error, _text(made)
        sandbox = made.structured_content["sandbox"]
        seen["sandbox"] = sandbox

        ran = await session.call_tool(
            "run_command", {"sandbox": sandbox,
                            "command": "echo one; sleep 0.3; echo two; echo err >&2; exit 4"},
            progress_callback=progress)
        assert not ran.is_error, _text(ran)
        seen["run"] = ran.structured_content

        wrote = await session.call_tool("write_file", {"sandbox": sandbox,
                                                       "path": "/tmp/note.txt",
                                                       "content": "from mcp\n"})
        assert not wrote.is_error, _text(wrote)
        read = await session.call_tool("read_file", {"sandbox": sandbox,
                                                     "path": "/tmp/note.txt"})
        seen["read"] = (read.is_error, _text(read))
        listed = await session.call_tool("list_files", {"sandbox": sandbox, "path": "/tmp"})
        seen["listed"] = _text(listed)
        absent = await session.call_tool("read_file", {"sandbox": sandbox,
                                                       "path": "/tmp/absent.txt"})
        seen["absent"] = (absent.is_error, _text(absent))
    return seen


def test_mcp_over_stdio(engine: Engine) -> None:
    seen = anyio.run(_session_run)
    assert seen["tools"] == ["create_sandbox", "delete_sandbox", "list_files", "read_file",
                             "run_command", "write_file"]
    is_error, text = seen["missing"]
    assert is_error and "[VM_NOT_FOUND] Machine 'sbx-nothere' not found" in text, text
    assert "help: List machines" in text, text
    assert seen["run"]["exit_code"] == 4
    assert seen["run"]["stdout"] == "one\ntwo\n" and seen["run"]["stderr"] == "err\n"
    assert any(m and "one" in m for m in seen["progress"]), seen["progress"]
    assert seen["read"] == (False, "from mcp\n")
    assert "note.txt" in seen["listed"]
    assert seen["absent"][0] and "[GUEST_FILE_NOT_FOUND]" in seen["absent"][1], seen["absent"]
    # The session ended: the sandbox it made is gone (deleted by the server on exit).
    assert seen["sandbox"] not in {r.id for r in engine.list_machines()}

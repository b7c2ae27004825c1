"""The MCP tools: create a sandbox, run a command (streamed progress), files, delete.

Why over an SDK backend: the MCP server is a front door like the REST API and the
E2B door; it calls ``LocalBackend`` (embedded engine, stdio) or the server's own
backend (HTTP under ``smolbox serve``) and holds no VM logic. Every failure is the
catalogue's error: the tool result is an MCP error whose text starts with the code
(``[VM_NOT_FOUND] ...``) and carries the help. Sandboxes a session made are
tracked and deleted when the server's session ends; each also gets a lifetime
(``MachineConfig.timeout``), so one is never left behind even if that cleanup
cannot run.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from smolbox import errors
from smolbox.channel.types import ExecEvent
from smolbox.sdk.aio import iterate_in_thread
from smolbox.sdk.backend import Backend
from smolbox.sdk.machine import build_config

DEFAULT_LIFETIME_S = 3600.0
MAX_OUTPUT = 1 << 20  # bytes of stdout/stderr returned per command (the rest is cut)
MAX_READ = 4 << 20


def tool_error(err: errors.SmolboxError) -> ToolError:
    text = f"[{err.code}] {err.message}"
    if err.help:
        text += f"\nhelp: {err.help}"
    return ToolError(text)


class Sandboxes:
    """The machines this MCP server made (deleted by :meth:`cleanup`)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._made: dict[str, str | None] = {}  # machine id -> MCP session id (HTTP)

    def add(self, vm: str, session: str | None = None) -> None:
        with self._lock:
            self._made[vm] = session

    def discard(self, vm: str) -> None:
        with self._lock:
            self._made.pop(vm, None)

    def cleanup(self, session: str | None = None) -> None:
        """Delete the machines made here (with ``session``: that MCP session's only)."""
        with self._lock:
            made = sorted(vm for vm, owner in self._made.items()
                          if session is None or owner == session)
            for vm in made:
                del self._made[vm]
        for vm in made:
            try:
                self.backend.delete(vm, force=True)
            except errors.SmolboxError:
                continue  # already gone (expired, deleted elsewhere)


async def _run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))
    except errors.SmolboxError as err:
        raise tool_error(err) from None


def _track(ctx: Context, sandboxes: Sandboxes, vm: str) -> None:
    """Remember ``vm`` with its MCP session (HTTP: the ``Mcp-Session-Id`` header)."""
    headers = ctx.headers or {}
    sandboxes.add(vm, headers.get("mcp-session-id"))


def build_server(backend: Backend, *, name: str = "smolbox") -> tuple[MCPServer[Any], Sandboxes]:
    """The MCP server over ``backend`` and the tracker of the sandboxes it makes."""
    sandboxes = Sandboxes(backend)

    @asynccontextmanager
    async def lifespan(_server: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(sandboxes.cleanup)

    server: MCPServer[Any] = MCPServer(
        name, instructions="Disposable microVM sandboxes: create one, run commands and "
        "move files in it, delete it when done.", lifespan=lifespan)

    @server.tool()
    async def create_sandbox(ctx: Context, image: str = "default", memory_mib: int = 256,
                             timeout_s: float = DEFAULT_LIFETIME_S) -> dict[str, Any]:
        """Create and boot a sandbox (microVM); returns its id. It is deleted after
        ``timeout_s`` seconds, or when this MCP session ends."""
        try:
            config = build_config(None, {"image": image, "memory_mib": memory_mib,
                                         "timeout": timeout_s})
        except errors.SmolboxError as err:
            raise tool_error(err) from None
        info = await _run(backend.create, config)
        _track(ctx, sandboxes, info.id)
        return {"sandbox": info.id, "state": info.state, "expires_at": info.expires_at}

    @server.tool()
    async def run_command(sandbox: str, command: str, ctx: Context, cwd: str | None = None,
                          env: dict[str, str] | None = None, user: str | None = None,
                          timeout_s: float | None = None) -> dict[str, Any]:
        """Run a shell command in the sandbox; output is reported as progress while it
        runs, and the result has the exit code, stdout and stderr."""
        try:
            events = await anyio.to_thread.run_sync(lambda: iter(backend.exec_stream(
                sandbox, ["/bin/bash", "-lc", command], env=env, cwd=cwd, user=user,
                timeout=timeout_s)))
            out, err_parts = bytearray(), bytearray()
            exit_event: ExecEvent | None = None
            seen = 0
            async for event in iterate_in_thread(events):
                if event.kind == "exit":
                    exit_event = event
                    break
                target = out if event.kind == "stdout" else err_parts
                if len(target) < MAX_OUTPUT:
                    target.extend(event.data[:MAX_OUTPUT - len(target)])
                seen += len(event.data)
                await ctx.report_progress(seen, message=event.text)
        except errors.SmolboxError as err:
            raise tool_error(err) from None
        return {"exit_code": exit_event.exit_code if exit_event else None,
                "signal": exit_event.signal if exit_event else None,
                "stdout": out.decode("utf-8", "replace"),
                "stderr": err_parts.decode("utf-8", "replace")}

    @server.tool()
    async def read_file(sandbox: str, path: str) -> str:
        """Read a text file from the sandbox (up to 4 MiB)."""
        info = await _run(backend.stat, sandbox, path)
        if info.size > MAX_READ:
            raise tool_error(errors.PayloadTooLargeError(
                f"{path} is {info.size} bytes; read_file returns at most {MAX_READ}",
                field="path", value=path, help="Read a slice with run_command (head/tail)."))
        data = await _run(lambda: b"".join(backend.read_file(sandbox, path)))
        return bytes(data).decode("utf-8", "replace")

    @server.tool()
    async def write_file(sandbox: str, path: str, content: str) -> dict[str, Any]:
        """Write a text file in the sandbox (atomically; parents must exist)."""
        await _run(backend.write_file, sandbox, path, content.encode())
        return {"path": path, "bytes": len(content.encode())}

    @server.tool()
    async def list_files(sandbox: str, path: str) -> list[dict[str, Any]]:
        """List a directory in the sandbox: name, type, size."""
        entries = await _run(backend.list_dir, sandbox, path)
        return [{"name": e.name, "type": e.type, "size": e.size} for e in entries]

    @server.tool()
    async def delete_sandbox(sandbox: str) -> dict[str, Any]:
        """Delete the sandbox and everything in it."""
        await _run(backend.delete, sandbox, force=True)
        sandboxes.discard(sandbox)
        return {"deleted": sandbox}

    return server, sandboxes

"""``/v1/machines/{vm}/shell``: an interactive terminal over a WebSocket.

Frames: binary both ways are terminal bytes (stdin up, output down); text frames
are JSON control messages — from the client ``{"type": "eof"}``; from the server
``{"type": "ready"}`` once the guest pty runs, ``{"type": "exit", "code": N}`` at
the end, or ``{"type": "error", "error": {...}}`` (the catalogue body) instead.

Why auth is checked here and not by the router dependency: FastAPI's HTTP bearer
dependency does not apply to WebSocket routes, so the same constant-time check
runs on the handshake headers. Errors are sent as a frame after accepting, since
browsers and most clients cannot read an HTTP body from a refused upgrade.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from smolbox import errors
from smolbox.sdk.aio import iterate_in_thread
from smolbox.sdk.backend import ShellSession
from smolbox.sdk.local import LocalBackend
from smolbox.server.deps import call
from smolbox.server.middleware import incoming_request_id
from smolbox.server.workers import MachineWorkers

router = APIRouter()
POLICY_VIOLATION = 1008
INTERNAL = 1011


def _check_token(websocket: WebSocket) -> None:
    expected: str | None = websocket.app.state.settings.token
    if expected is None:
        return
    scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise errors.AuthError("Missing bearer token (Authorization: Bearer <token>)")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise errors.AuthError("Invalid bearer token")


@router.websocket("/v1/machines/{vm}/shell")
async def shell(websocket: WebSocket, vm: str,
                rows: Annotated[int, Query(ge=1, le=1000)] = 24,
                cols: Annotated[int, Query(ge=1, le=1000)] = 80,
                command: Annotated[list[str] | None, Query()] = None) -> None:
    rid = incoming_request_id(websocket.scope)
    await websocket.accept(headers=[(b"x-request-id", rid.encode())])
    backend: LocalBackend = websocket.app.state.backend
    try:
        _check_token(websocket)
        machine_workers: MachineWorkers = websocket.app.state.workers
        session: ShellSession = await machine_workers.call(
            vm, backend.shell, vm, command=command, rows=rows, cols=cols)
    except errors.SmolboxError as err:
        err.details.setdefault("request_id", rid)
        await websocket.send_text(json.dumps({"type": "error", **err.to_dict()}))
        await websocket.close(POLICY_VIOLATION if isinstance(err, errors.AuthError)
                              else INTERNAL)
        return
    try:
        await websocket.send_text(json.dumps({"type": "ready"}))
        await _relay(websocket, session)
    finally:
        await call(session.close)
        if websocket.client_state == WebSocketState.CONNECTED:
            await websocket.close()


async def _relay(websocket: WebSocket, session: ShellSession) -> None:
    async with anyio.create_task_group() as tasks:

        async def output() -> None:
            async for chunk in iterate_in_thread(iter(session.output())):
                await websocket.send_bytes(chunk)
            await websocket.send_text(json.dumps({"type": "exit", "code": session.exit_code}))
            tasks.cancel_scope.cancel()

        tasks.start_soon(output)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes"):
                    await call(session.send, message["bytes"])
                elif _control(message.get("text")).get("type") == "eof":
                    await call(session.close_input)
        except WebSocketDisconnect:
            pass
        # The client left: end the guest process so the output pump returns, then stop.
        await call(session.close)
        tasks.cancel_scope.cancel()


def _control(text: str | None) -> dict[str, Any]:
    """A client control frame; anything unreadable is ignored, never fatal."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

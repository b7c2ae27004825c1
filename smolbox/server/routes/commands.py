"""Commands in a machine: exec (JSON), exec streamed over SSE, console logs.

SSE frames: ``event: stdout|stderr|exit|error`` and ``data:`` one JSON object
(ExecEventModel, or the catalogue error body for ``error``). The stream always
ends with ``exit`` or ``error``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from smolbox import errors
from smolbox.sdk.local import LocalBackend
from smolbox.sdk.models import ExecEventModel, ExecRequest, ExecResultModel
from smolbox.server.deps import backend, call, open_stream
from smolbox.server.routes.common import ERRORS
from smolbox.server.workers import MachineWorkers, workers

router = APIRouter(prefix="/machines", tags=["commands"], responses=ERRORS)
Backend = Annotated[LocalBackend, Depends(backend)]
Workers = Annotated[MachineWorkers, Depends(workers)]
VM = Annotated[str, Path(min_length=1, max_length=128, description="Machine name or id")]
SSE = "text/event-stream"


@router.post("/{vm}/exec", response_model=ExecResultModel, summary="Run a command")
async def exec_command(b: Backend, w: Workers, vm: VM, body: ExecRequest) -> ExecResultModel:
    result = await w.call(vm, b.exec, vm, body.cmd, env=body.env, cwd=body.cwd, user=body.user,
                        stdin=body.stdin_bytes(), timeout=body.timeout)
    return ExecResultModel.of(result)


def sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


@router.post(
    "/{vm}/exec/stream", response_class=StreamingResponse, summary="Run a command, stream output",
    responses={200: {"description": "Server-sent events: stdout, stderr, then exit (or error)",
                     "content": {SSE: {"schema": {"type": "string"}}}}})
async def exec_stream(b: Backend, w: Workers, vm: VM, body: ExecRequest) -> StreamingResponse:
    events = await w.stream(vm, lambda: b.exec_stream(
        vm, body.cmd, env=body.env, cwd=body.cwd, user=body.user, stdin=body.stdin_bytes(),
        timeout=body.timeout))

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield sse(event.kind, ExecEventModel.of(event).model_dump_json())
        except errors.SmolboxError as err:
            yield sse("error", json.dumps(err.to_dict()))

    return StreamingResponse(frames(), media_type=SSE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get(
    "/{vm}/logs", response_class=StreamingResponse, summary="Console log (bounded)",
    responses={200: {"description": "The console text; with follow=true it keeps streaming",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def logs(b: Backend, vm: VM, follow: bool = False) -> StreamingResponse:
    await call(b.get, vm)  # a missing machine is a 404, even when the log is empty
    chunks = await open_stream(lambda: b.logs(vm, follow=follow))

    async def text() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk.encode()

    return StreamingResponse(text(), media_type="text/plain; charset=utf-8")

"""Liveness, readiness and metrics (outside /v1: they describe the server, not the API).

``/healthz`` answers while the process serves; ``/readyz`` also checks the store
and the default image, and that the threads for calls into machines are not all
taken (guests that stopped answering hold them until their keepalive ends them), so
a load balancer only sends work that can succeed. Its body reports that load.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from smolbox import errors
from smolbox.sdk.local import LocalBackend
from smolbox.server.auth import require_token
from smolbox.server.deps import backend, call
from smolbox.server.metrics import CONTENT_TYPE, Metrics
from smolbox.server.routes.common import ERRORS
from smolbox.server.workers import MachineWorkers, workers

router = APIRouter(tags=["health"])
Backend = Annotated[LocalBackend, Depends(backend)]
Workers = Annotated[MachineWorkers, Depends(workers)]


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: store and default image usable",
            responses={503: ERRORS[503]})
async def readyz(b: Backend, w: Workers) -> dict[str, str | int]:
    def check() -> None:
        b.engine.list_machines()
        b.engine.images.get("default")

    try:
        await call(check)
    except errors.SmolboxError as err:
        raise errors.UnavailableError(
            f"Not ready: {err.message}", details={"cause": err.code},
            help=err.help) from None
    load = w.load()
    if load["machine_threads_in_use"] >= load["machine_threads"]:
        raise errors.UnavailableError(
            f"Not ready: all {load['machine_threads']} threads for machine calls are busy "
            f"({load['busy_machines']} machines at their per-machine limit)",
            details={"cause": "MACHINE_THREADS_EXHAUSTED", "retry_after": 1},
            help="Wait; calls into unresponsive guests end within the agent keepalive bound.")
    return {"status": "ready", **load}


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)],
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
                       401: ERRORS[401]})
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(await call(registry.render), media_type=CONTENT_TYPE)

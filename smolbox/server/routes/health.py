"""Liveness, readiness and metrics (outside /v1: they describe the server, not the API).

``/healthz`` answers while the process serves; ``/readyz`` also checks the store
and the default image, so a load balancer only sends work that can succeed.
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

router = APIRouter(tags=["health"])
Backend = Annotated[LocalBackend, Depends(backend)]


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: store and default image usable",
            responses={503: ERRORS[503]})
async def readyz(b: Backend) -> dict[str, str]:
    def check() -> None:
        b.engine.list_machines()
        b.engine.images.get("default")

    try:
        await call(check)
    except errors.SmolboxError as err:
        raise errors.UnavailableError(
            f"Not ready: {err.message}", details={"cause": err.code},
            help=err.help) from None
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)],
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
                       401: ERRORS[401]})
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(await call(registry.render), media_type=CONTENT_TYPE)

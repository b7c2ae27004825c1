"""E2B's control plane (``E2B_API_URL``) mapped onto the engine through LocalBackend.

Sandboxes are smolbox machines: ``sandboxID`` is the machine id, ``templateID`` an
image (``base`` -> the default image) or a snapshot to fork, ``envVars`` the
machine's env, ``metadata`` its labels, ``timeout`` its lifetime
(``MachineConfig.timeout``; ``autoPause`` -> ``on_timeout="pause"``). Errors are
E2B's ``{"code": <status>, "message": ...}`` so the SDK raises its own exceptions.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from smolbox import errors
from smolbox.sdk.local import LocalBackend
from smolbox.sdk.machine import build_config
from smolbox.sdk.models import MachineInfo
from smolbox.server.deps import backend, call
from smolbox.server.e2b.access import AccessDenied, check_api_key, envd_token, settings_of

router = APIRouter(include_in_schema=False)
ENVD_VERSION = "0.5.7"  # the envd API level served (octet-stream uploads, stdin close)
CLIENT_ID = "smolbox"
TEMPLATE_LABEL = "e2b.template"
BASE_TEMPLATES = {"base", "default", ""}
NO_EXPIRY = dt.timedelta(days=3650)


def e2b_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


async def guarded(request: Request, work: Callable[[LocalBackend], Awaitable[Response]]
                  ) -> Response:
    """Check the API key, run ``work``, answer refusals and catalogue errors as E2B does."""
    try:
        check_api_key(request)
        return await work(backend(request))
    except AccessDenied as denied:
        return e2b_error(denied.status, denied.message)
    except errors.SmolboxError as err:
        text = f"{err.message} [{err.code}]" + (f" {err.help}" if err.help else "")
        return e2b_error(err.http_status if err.http_status != 422 else 400, text)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def _template_of(info: MachineInfo) -> str:
    labels = info.config.get("labels") or {}
    return str(labels.get(TEMPLATE_LABEL) or info.image)


def _metadata(info: MachineInfo) -> dict[str, str]:
    labels = info.config.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items() if k != TEMPLATE_LABEL}


def sandbox_body(request: Request, info: MachineInfo) -> dict[str, Any]:
    """The create/connect answer (E2B's ``Sandbox``)."""
    body: dict[str, Any] = {"templateID": _template_of(info), "sandboxID": info.id,
                            "clientID": CLIENT_ID, "envdVersion": ENVD_VERSION}
    token = envd_token(settings_of(request), info.id)
    if token is not None:
        body["envdAccessToken"] = token
    return body


def detail_body(request: Request, info: MachineInfo, *, listed: bool = False
                ) -> dict[str, Any]:
    """``SandboxDetail`` (get) or ``ListedSandbox`` (list)."""
    config = info.config
    end = info.expires_at or (info.created_at + NO_EXPIRY.total_seconds())
    body = {
        "templateID": _template_of(info), "sandboxID": info.id, "clientID": CLIENT_ID,
        "startedAt": _iso(info.created_at), "endAt": _iso(end), "envdVersion": ENVD_VERSION,
        "cpuCount": int(config.get("vcpus") or 1), "memoryMB": int(config.get("memory_mib") or 0),
        "diskSizeMB": int(config.get("disk_size_mib") or 0),
        "state": "paused" if info.state == "paused" else "running",
        "metadata": _metadata(info),
    }
    token = envd_token(settings_of(request), info.id)
    if token is not None and not listed:
        body["envdAccessToken"] = token
    return body


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise errors.BadRequestError("The request body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.BadRequestError("The request body must be a JSON object")
    return body


def _create(b: LocalBackend, body: dict[str, Any]) -> MachineInfo:
    template = str(body.get("templateID") or "")
    timeout = body.get("timeout")
    env = body.get("envVars") or {}
    metadata = body.get("metadata") or {}
    if template not in BASE_TEMPLATES:
        try:
            b.get_snapshot(template)
        except errors.SnapshotNotFoundError:
            pass
        else:
            made = b.fork(template, 1, env=env or None)[0]
            if timeout:
                return b.set_timeout(made.id, float(timeout))
            return made
    image = "default" if template in BASE_TEMPLATES else template
    labels = {**metadata, TEMPLATE_LABEL: template or "base"}
    config = build_config(None, {
        "image": image, "env": env, "labels": labels,
        "timeout": float(timeout) if timeout else None,
        "on_timeout": "pause" if body.get("autoPause") else "delete",
    })
    return b.create(config)


@router.post("/v2/sandboxes")
@router.post("/sandboxes")
async def create_sandbox(request: Request) -> Response:
    async def work(b: LocalBackend) -> Response:
        body = await _json_object(request)
        info = await call(_create, b, body)
        return JSONResponse(sandbox_body(request, info), status_code=201)
    return await guarded(request, work)


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(request: Request, sandbox_id: str) -> Response:
    async def work(b: LocalBackend) -> Response:
        info = await call(b.get, sandbox_id)
        return JSONResponse(detail_body(request, info))
    return await guarded(request, work)


def _wanted_states(request: Request) -> set[str]:
    states: set[str] = set()
    for value in request.query_params.getlist("state"):
        states.update(s for s in value.split(",") if s)
    return states or {"running", "paused"}


@router.get("/v2/sandboxes")
@router.get("/sandboxes")
async def list_sandboxes(request: Request) -> Response:
    async def work(b: LocalBackend) -> Response:
        wanted = _wanted_states(request)
        metadata = dict(urllib.parse.parse_qsl(request.query_params.get("metadata") or ""))
        infos = await call(b.list, {"running", "paused"})
        listed = []
        for info in infos:
            body = detail_body(request, info, listed=True)
            if body["state"] not in wanted:
                continue
            if any(body["metadata"].get(k) != v for k, v in metadata.items()):
                continue
            listed.append(body)
        listed.sort(key=lambda s: s["startedAt"])
        return JSONResponse(listed)
    return await guarded(request, work)


@router.post("/sandboxes/{sandbox_id}/timeout")
async def set_sandbox_timeout(request: Request, sandbox_id: str) -> Response:
    async def work(b: LocalBackend) -> Response:
        body = await _json_object(request)
        timeout = body.get("timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise errors.BadRequestError("timeout must be a positive number of seconds")
        await call(b.set_timeout, sandbox_id, float(timeout))
        return Response(status_code=204)
    return await guarded(request, work)


def _connect(b: LocalBackend, sandbox_id: str, timeout: float | None) -> tuple[MachineInfo, bool]:
    info = b.get(sandbox_id)
    resumed = info.state == "paused"
    if resumed:
        info = b.resume(sandbox_id)
    if timeout:
        info = b.set_timeout(sandbox_id, timeout)
    return info, resumed


@router.post("/v2/sandboxes/{sandbox_id}/connect")
@router.post("/sandboxes/{sandbox_id}/resume")
async def connect_sandbox(request: Request, sandbox_id: str) -> Response:
    async def work(b: LocalBackend) -> Response:
        body = await _json_object(request) if await request.body() else {}
        timeout = body.get("timeout")
        info, resumed = await call(_connect, b, sandbox_id,
                                   float(timeout) if isinstance(timeout, int | float) else None)
        return JSONResponse(sandbox_body(request, info), status_code=201 if resumed else 200)
    return await guarded(request, work)


@router.post("/sandboxes/{sandbox_id}/pause")
async def pause_sandbox(request: Request, sandbox_id: str) -> Response:
    async def work(b: LocalBackend) -> Response:
        await call(b.pause, sandbox_id)
        return Response(status_code=204)
    return await guarded(request, work)


@router.delete("/sandboxes/{sandbox_id}")
async def kill_sandbox(request: Request, sandbox_id: str) -> Response:
    async def work(b: LocalBackend) -> Response:
        await call(b.delete, sandbox_id, force=True)
        return Response(status_code=204)
    return await guarded(request, work)

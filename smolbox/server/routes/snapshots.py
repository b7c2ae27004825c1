"""Snapshots: take one from a machine, list, inspect, delete, fork machines from it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from smolbox.sdk.local import LocalBackend
from smolbox.sdk.models import ForkRequest, MachineInfo, SnapshotInfo, SnapshotRequest
from smolbox.server.deps import backend, call
from smolbox.server.routes.common import ERRORS

router = APIRouter(tags=["snapshots"], responses=ERRORS)
Backend = Annotated[LocalBackend, Depends(backend)]
VM = Annotated[str, Path(min_length=1, max_length=128, description="Machine name or id")]
Name = Annotated[str, Path(min_length=1, max_length=128, description="Snapshot name or id")]


@router.post("/machines/{vm}/snapshots", response_model=SnapshotInfo,
             status_code=status.HTTP_201_CREATED, summary="Snapshot a running machine")
async def create_snapshot(b: Backend, vm: VM, body: SnapshotRequest) -> SnapshotInfo:
    return await call(b.snapshot, vm, body.name)


@router.get("/snapshots", response_model=list[SnapshotInfo], summary="List snapshots")
async def list_snapshots(b: Backend, vm: str | None = None) -> list[SnapshotInfo]:
    return await call(b.list_snapshots, vm)


@router.get("/snapshots/{name}", response_model=SnapshotInfo, summary="Snapshot details")
async def get_snapshot(b: Backend, name: Name) -> SnapshotInfo:
    return await call(b.get_snapshot, name)


@router.delete("/snapshots/{name}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, summary="Delete a snapshot")
async def delete_snapshot(b: Backend, name: Name) -> Response:
    await call(b.delete_snapshot, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/snapshots/{name}/fork", response_model=list[MachineInfo],
             status_code=status.HTTP_201_CREATED, summary="New machines from a snapshot")
async def fork(b: Backend, name: Name, body: ForkRequest) -> list[MachineInfo]:
    return await call(b.fork, name, body.count, names=body.names, env=body.env)

"""Machine lifecycle routes: create, list, info, start/stop/pause/resume, delete, restore."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from smolbox.config import MachineConfig
from smolbox.sdk.local import LocalBackend
from smolbox.sdk.models import MachineInfo, RestoreRequest, StopResult, TimeoutRequest
from smolbox.server.deps import backend, call
from smolbox.server.routes.common import ERRORS

router = APIRouter(prefix="/machines", tags=["machines"], responses=ERRORS)
Backend = Annotated[LocalBackend, Depends(backend)]
VM = Annotated[str, Path(min_length=1, max_length=128, description="Machine name or id")]
STATES = ("creating", "running", "paused", "stopped", "error")


@router.get("", response_model=list[MachineInfo], summary="List machines")
async def list_machines(
    b: Backend,
    state: Annotated[list[str] | None, Query(description=f"Filter: any of {STATES}")] = None,
) -> list[MachineInfo]:
    wanted = {s for s in state if s in STATES} if state else None
    if state and not wanted:
        return []
    return await call(b.list, wanted)


@router.post("", response_model=MachineInfo, status_code=status.HTTP_201_CREATED,
             summary="Create (and boot) a machine")
async def create_machine(b: Backend, config: MachineConfig,
                         start: bool = True) -> MachineInfo:
    # FastAPI validated the body into a MachineConfig: hand that object down as it is.
    return await call(b.create, config, start=start)


@router.get("/{vm}", response_model=MachineInfo, summary="Machine details")
async def get_machine(b: Backend, vm: VM) -> MachineInfo:
    return await call(b.info, vm)


@router.delete("/{vm}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               summary="Delete a machine and everything it owns")
async def delete_machine(b: Backend, vm: VM, force: bool = False) -> Response:
    await call(b.delete, vm, force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{vm}/start", response_model=MachineInfo, summary="Boot a stopped machine")
async def start_machine(b: Backend, vm: VM) -> MachineInfo:
    return await call(b.start, vm)


@router.post("/{vm}/stop", response_model=StopResult, summary="Stop (shutdown ladder)")
async def stop_machine(b: Backend, vm: VM, graceful: bool = True) -> StopResult:
    step = await call(b.stop, vm, graceful=graceful)
    record = await call(b.get, vm)
    return StopResult(id=record.id, stopped_by=step)


@router.post("/{vm}/restart", response_model=MachineInfo, summary="Stop, then start")
async def restart_machine(b: Backend, vm: VM) -> MachineInfo:
    return await call(b.restart, vm)


@router.post("/{vm}/pause", response_model=MachineInfo, summary="Freeze the vCPUs")
async def pause_machine(b: Backend, vm: VM) -> MachineInfo:
    return await call(b.pause, vm)


@router.post("/{vm}/timeout", response_model=MachineInfo,
             summary="Set the lifetime: expire this many seconds from now (null: never)")
async def set_machine_timeout(b: Backend, vm: VM, body: TimeoutRequest) -> MachineInfo:
    return await call(b.set_timeout, vm, body.timeout)


@router.post("/{vm}/resume", response_model=MachineInfo, summary="Continue a paused machine")
async def resume_machine(b: Backend, vm: VM) -> MachineInfo:
    return await call(b.resume, vm)


@router.post("/{vm}/restore", response_model=MachineInfo,
             summary="Put the machine back to a snapshot")
async def restore_machine(b: Backend, vm: VM, body: RestoreRequest) -> MachineInfo:
    return await call(b.restore, vm, body.snapshot)

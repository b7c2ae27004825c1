"""Guest files: streamed upload and download (with size limits), stat, list, mkdir, remove.

Why a bridge object for uploads: the agent's ``write_file`` reads a blocking file
object in a worker thread, while the request body arrives on the event loop.
:class:`BodyReader` lets the worker pull body chunks from the loop one at a time
(``anyio.from_thread``), so a 1 GiB upload never sits in memory or on disk here,
and the limit is enforced as bytes arrive (also when no Content-Length is sent).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Annotated, BinaryIO, cast

import anyio.from_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from smolbox import errors
from smolbox.sdk.local import LocalBackend
from smolbox.sdk.models import FileStatModel
from smolbox.server.deps import backend, settings
from smolbox.server.routes.common import ERRORS
from smolbox.server.settings import ServerSettings
from smolbox.server.workers import MachineWorkers, workers

router = APIRouter(prefix="/machines", tags=["files"], responses=ERRORS)
Backend = Annotated[LocalBackend, Depends(backend)]
Settings = Annotated[ServerSettings, Depends(settings)]
Workers = Annotated[MachineWorkers, Depends(workers)]
VM = Annotated[str, Path(min_length=1, max_length=128, description="Machine name or id")]
GuestPath = Annotated[str, Query(min_length=1, max_length=4096, pattern=r"^/",
                                 description="Absolute guest path")]
OCTETS = "application/octet-stream"


def too_large(what: str, limit: int, size: int | None = None) -> errors.PayloadTooLargeError:
    return errors.PayloadTooLargeError(
        f"The {what} exceeds the server's limit of {limit} bytes", field="body",
        value=size, details={"limit_bytes": limit},
        help="Split the file, or start the server with a larger limit "
             "(`smolbox serve --max-upload-mib/--max-download-mib`).")


class BodyReader(io.RawIOBase):
    """A blocking ``read()`` over the async request body, for use in a worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self._buffer = b""
        self._total = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def read(self, size: int | None = -1) -> bytes:
        while not self._eof and (size is None or size < 0 or len(self._buffer) < size):
            chunk = anyio.from_thread.run(self._next)
            if not chunk:
                self._eof = True
                break
            self._total += len(chunk)
            if self._total > self._limit:
                raise too_large("upload", self._limit, self._total)
            self._buffer += chunk
        if size is None or size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


@router.put(
    "/{vm}/files/content", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
    summary="Write a guest file (atomic, streamed body)",
    openapi_extra={"requestBody": {"required": True, "content": {
        OCTETS: {"schema": {"type": "string", "format": "binary"}}}}})
async def write_file(request: Request, b: Backend, w: Workers, cfg: Settings, vm: VM,
                     path: GuestPath,
                     mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644) -> Response:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes:
        raise too_large("upload", cfg.max_upload_bytes, int(declared))
    reader = cast(BinaryIO, BodyReader(request.stream(), cfg.max_upload_bytes))
    await w.call(vm, b.write_file, vm, path, reader, mode=mode)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{vm}/files/content", response_class=StreamingResponse,
    summary="Read a guest file (streamed)",
    responses={200: {"description": "The file's bytes",
                     "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}}}})
async def read_file(b: Backend, w: Workers, cfg: Settings, vm: VM,
                    path: GuestPath) -> StreamingResponse:
    info = await w.call(vm, b.stat, vm, path)
    if info.type == "dir":
        raise errors.GuestFileError(f"{path} is a directory", path=path,
                                    help="List it with GET .../files/list?path=…")
    if info.size > cfg.max_download_bytes:
        raise too_large("download", cfg.max_download_bytes, info.size)
    chunks = await w.stream(vm, lambda: b.read_file(vm, path))
    return StreamingResponse(chunks, media_type=OCTETS,
                             headers={"X-Smolbox-File-Size": str(info.size)})


@router.get("/{vm}/files/stat", response_model=FileStatModel, summary="Stat a guest path")
async def stat(b: Backend, w: Workers, vm: VM, path: GuestPath) -> FileStatModel:
    return FileStatModel.of(await w.call(vm, b.stat, vm, path))


@router.get("/{vm}/files/list", response_model=list[FileStatModel],
            summary="List a guest directory")
async def list_dir(b: Backend, w: Workers, vm: VM, path: GuestPath) -> list[FileStatModel]:
    return [FileStatModel.of(s) for s in await w.call(vm, b.list_dir, vm, path)]


@router.post("/{vm}/files/mkdir", status_code=status.HTTP_204_NO_CONTENT,
             response_class=Response, summary="Create a guest directory")
async def mkdir(b: Backend, w: Workers, vm: VM, path: GuestPath, parents: bool = True) -> Response:
    await w.call(vm, b.mkdir, vm, path, parents=parents)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{vm}/files", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, summary="Remove a guest path")
async def remove(b: Backend, w: Workers, vm: VM, path: GuestPath,
                 recursive: bool = False) -> Response:
    await w.call(vm, b.remove, vm, path, recursive=recursive)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

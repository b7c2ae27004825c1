"""envd's ``filesystem.Filesystem`` service and its plain HTTP ``/files`` and ``/health``.

Files go through the engine's files API (large ones over the transfer disk), as
the guest user: relative paths start at the user's home, and what is written or
made is handed to that user (``chown`` in the guest), as envd does. Entries are
proto3 JSON ``EntryInfo``s. ``WatchDir`` and the watcher calls answer
``unimplemented`` (listed in the README).
"""

from __future__ import annotations

import datetime as dt
import posixpath
import stat as statmod
from typing import Annotated, Any, BinaryIO, cast

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from smolbox import errors
from smolbox.channel.types import FileStat
from smolbox.server.deps import open_stream
from smolbox.server.e2b import connect as c
from smolbox.server.e2b.access import AccessDenied
from smolbox.server.e2b.envd import EnvdContext, context, unary
from smolbox.server.routes.files import BodyReader, too_large

router = APIRouter(include_in_schema=False)
SERVICE = "/filesystem.Filesystem"
TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
OWNERS = {0: "root", 1000: "user"}
MAX_DEPTH = 16


def entry(info: FileStat) -> dict[str, Any]:
    """A guest stat as envd's ``EntryInfo``."""
    kind = info.type
    type_bits = {"dir": statmod.S_IFDIR, "symlink": statmod.S_IFLNK}.get(kind, statmod.S_IFREG)
    body: dict[str, Any] = {
        "name": info.name, "type": TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        "path": info.path, "size": str(info.size), "mode": info.mode,
        "permissions": statmod.filemode(type_bits | info.mode),
        "owner": OWNERS.get(info.uid, str(info.uid)), "group": OWNERS.get(info.gid, str(info.gid)),
        "modifiedTime": dt.datetime.fromtimestamp(info.mtime, dt.UTC).isoformat()
        .replace("+00:00", "Z"),
        "isSymlink": kind == "symlink",
    }
    if info.target:
        body["symlinkTarget"] = info.target
    return body


def _give_to_user(ctx: EnvdContext, path: str) -> None:
    """Hand a path (and new directories under the home on the way) to the guest user."""
    if ctx.user == "root":
        return
    with ctx.engine.guest(ctx.sandbox_id, "chown") as agent:
        if agent.supports("fsops"):
            agent.request("chown", path=path, user=ctx.user, parents_from=ctx.home)


def _exists(ctx: EnvdContext, path: str) -> bool:
    try:
        ctx.backend.stat(ctx.sandbox_id, path)
    except errors.GuestFileNotFoundError:
        return False
    return True


# ------------------------------------------------------------------------ RPC



@router.post(f"{SERVICE}/Stat")
async def stat(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        path = ctx.path(str(message.get("path") or ""))
        return {"entry": entry(ctx.backend.stat(ctx.sandbox_id, path))}
    return await unary(request, work)


@router.post(f"{SERVICE}/ListDir")
async def list_dir(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        root = ctx.path(str(message.get("path") or ""))
        depth = max(1, min(int(message.get("depth") or 1), MAX_DEPTH))
        if ctx.backend.stat(ctx.sandbox_id, root).type != "dir":
            raise c.ConnectError("invalid_argument", f"{root} is not a directory")
        found: list[dict[str, Any]] = []
        level = [root]
        for _ in range(depth):
            below = []
            for directory in level:
                for info in ctx.backend.list_dir(ctx.sandbox_id, directory):
                    found.append(entry(info))
                    if info.type == "dir":
                        below.append(info.path)
            level = below
        return {"entries": found}
    return await unary(request, work)


@router.post(f"{SERVICE}/MakeDir")
async def make_dir(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        path = ctx.path(str(message.get("path") or ""))
        if _exists(ctx, path):
            raise c.ConnectError("already_exists", f"directory {path} already exists")
        ctx.backend.mkdir(ctx.sandbox_id, path, parents=True)
        _give_to_user(ctx, path)
        return {"entry": entry(ctx.backend.stat(ctx.sandbox_id, path))}
    return await unary(request, work)


@router.post(f"{SERVICE}/Move")
async def move(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        source = ctx.path(str(message.get("source") or ""))
        destination = ctx.path(str(message.get("destination") or ""))
        with ctx.engine.guest(ctx.sandbox_id, "move") as agent:
            if not agent.supports("fsops"):
                raise c.ConnectError("unimplemented", "this machine's image cannot rename; "
                                     "rebuild the image")
            agent.request("move", source=source, destination=destination)
        return {"entry": entry(ctx.backend.stat(ctx.sandbox_id, destination))}
    return await unary(request, work)


@router.post(f"{SERVICE}/Remove")
async def remove(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        path = ctx.path(str(message.get("path") or ""))
        ctx.backend.remove(ctx.sandbox_id, path, recursive=True)
        return {}
    return await unary(request, work)


@router.post(f"{SERVICE}/WatchDir")
async def watch_dir(request: Request) -> Response:
    async def once() -> Any:
        yield c.end_of_stream(c.ConnectError(
            "unimplemented", "directory watching is not supported by smolbox's envd"))
    return StreamingResponse(once(), media_type=c.STREAM)


@router.post(f"{SERVICE}/CreateWatcher")
@router.post(f"{SERVICE}/GetWatcherEvents")
@router.post(f"{SERVICE}/RemoveWatcher")
async def watchers(request: Request) -> Response:
    return c.unary_error(c.ConnectError(
        "unimplemented", "directory watching is not supported by smolbox's envd"))


# ------------------------------------------------------------------------ HTTP


def http_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def http_from(err: errors.SmolboxError) -> JSONResponse:
    status = 400 if err.http_status == 422 else err.http_status
    text = f"{err.message} [{err.code}]" + (f" {err.help}" if err.help else "")
    return http_error(status, text)


Path = Annotated[str | None, Query()]
User = Annotated[str | None, Query(alias="username")]


@router.get("/health")
async def health(request: Request) -> Response:
    return Response(status_code=204)


@router.get("/files")
async def download(request: Request, path: Path = None, username: User = None) -> Response:
    try:
        ctx = context(request, username)
        guest_path = ctx.path(path or "")
        info = await anyio.to_thread.run_sync(ctx.backend.stat, ctx.sandbox_id, guest_path)
        if info.type == "dir":
            return http_error(400, f"path '{guest_path}' is a directory")
        limit = request.app.state.settings.max_download_bytes
        if info.size > limit:
            return http_from(too_large("download", limit, info.size))
        chunks = await open_stream(lambda: ctx.backend.read_file(ctx.sandbox_id, guest_path))
    except AccessDenied as denied:
        return http_error(denied.status, denied.message)
    except errors.SmolboxError as err:
        return http_from(err)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Length": str(info.size)})


def _write(ctx: EnvdContext, path: str, source: BinaryIO) -> dict[str, Any]:
    parent = posixpath.dirname(path)
    if parent and not _exists(ctx, parent):
        ctx.backend.mkdir(ctx.sandbox_id, parent, parents=True)
        _give_to_user(ctx, parent)
    ctx.backend.write_file(ctx.sandbox_id, path, source)
    _give_to_user(ctx, path)
    return {"name": posixpath.basename(path), "type": "file", "path": path}


@router.post("/files")
async def upload(request: Request, path: Path = None, username: User = None) -> Response:
    try:
        ctx = context(request, username)
        limit = request.app.state.settings.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return http_from(too_large("upload", limit, int(declared)))
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        written = []
        if kind == "multipart/form-data":
            form = await request.form()
            try:
                for _field, value in form.multi_items():
                    if isinstance(value, str):
                        continue
                    target = ctx.path(path or value.filename or "")
                    written.append(await anyio.to_thread.run_sync(
                        _write, ctx, target, value.file))
            finally:
                await form.close()
        else:
            if request.headers.get("content-encoding", "identity") != "identity":
                return http_error(400, "compressed uploads are not supported")
            if not path:
                return http_error(400, "the path query parameter is required")
            reader = cast(BinaryIO, BodyReader(request.stream(), limit))
            written.append(await anyio.to_thread.run_sync(_write, ctx, ctx.path(path), reader))
    except AccessDenied as denied:
        return http_error(denied.status, denied.message)
    except errors.SmolboxError as err:
        return http_from(err)
    return JSONResponse(written)

"""envd's ``process.Process`` service on the guest agent's background processes.

Every ``Start`` spawns a background process in the guest (so, as in envd, it keeps
running when the caller disconnects, and ``List``/``Connect`` find it by pid from
any client). The stream carries ``start{pid}``, ``data{stdout|stderr}``,
``keepalive`` and ``end{exitCode, exited, status}``; a ``Connect-Timeout-Ms``
deadline (the SDK's command ``timeout``, 60 s by default, also for background
commands; ``timeout=0`` for none) kills the process group and ends the stream with
``deadline_exceeded``.
``Live`` remembers which handle currently listens to a pid in this server, so
stdin and signals go through it instead of stealing the process from its reader.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from smolbox import errors
from smolbox.channel import AgentClient
from smolbox.channel.client import ProcessHandle
from smolbox.server.e2b import connect as c
from smolbox.server.e2b.envd import RPC_FAILURES, EnvdContext, connect_error, context, unary

router = APIRouter(include_in_schema=False)
SERVICE = "/process.Process"
KEEPALIVE_S = 50.0
POLL_S = 1.0
DEADLINE_SLACK_S = 1.5  # a disconnect this close to the deadline is the deadline
SIGNALS: dict[object, int] = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15, 9: 9, 15: 15}
SIGNAL_STATUS: dict[int, str] = {int(signal.SIGKILL): "signal: killed",
                                 int(signal.SIGTERM): "signal: terminated"}


class Live:
    """(sandbox, pid) -> the handle listening to it in this server, plus tags."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[tuple[str, int], ProcessHandle] = {}
        self._tags: dict[tuple[str, str], int] = {}
        self._tag_of: dict[tuple[str, int], str] = {}

    def put(self, vm: str, handle: ProcessHandle, tag: str | None = None) -> None:
        with self._lock:
            self._handles[(vm, handle.pid)] = handle
            if tag:
                self._tags[(vm, tag)] = handle.pid
                self._tag_of[(vm, handle.pid)] = tag

    def drop(self, vm: str, handle: ProcessHandle, *, exited: bool = False) -> None:
        """Forget ``handle`` as the pid's listener (and the pid's tag once it exited)."""
        with self._lock:
            if self._handles.get((vm, handle.pid)) is handle:
                del self._handles[(vm, handle.pid)]
            if exited:
                tag = self._tag_of.pop((vm, handle.pid), None)
                if tag is not None and self._tags.get((vm, tag)) == handle.pid:
                    del self._tags[(vm, tag)]

    def get(self, vm: str, pid: int) -> ProcessHandle | None:
        with self._lock:
            return self._handles.get((vm, pid))

    def pid_of_tag(self, vm: str, tag: str) -> int | None:
        with self._lock:
            return self._tags.get((vm, tag))

    def tag_of(self, vm: str, pid: int) -> str | None:
        with self._lock:
            return self._tag_of.get((vm, pid))


def live_of(request: Request) -> Live:
    live: Live | None = getattr(request.app.state, "e2b_live", None)
    if live is None:
        live = request.app.state.e2b_live = Live()
    return live


def agent_of(ctx: EnvdContext) -> AgentClient:
    """The machine's cached agent client (raises the engine's not-found/state errors)."""
    with ctx.engine.guest(ctx.sandbox_id, "exec") as agent:
        return agent


def running(agent: AgentClient) -> list[dict[str, Any]]:
    if not agent.supports("ps"):
        raise errors.NotSupportedError(
            "This machine's image predates process listing", operation="process list",
            reason="the guest agent has no 'ps' operation",
            help="Rebuild the image (`smolbox image build`) and create the machine again.")
    found = agent.request("ps").get("processes")
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []


def _selected_pid(live: Live, ctx: EnvdContext, message: dict[str, Any]) -> int:
    selector = message.get("process") or {}
    if "pid" in selector:
        return int(selector["pid"])
    if "tag" in selector:
        pid = live.pid_of_tag(ctx.sandbox_id, str(selector["tag"]))
        if pid is None:
            raise c.ConnectError("not_found", f"process with tag {selector['tag']} not found")
        return pid
    raise c.ConnectError("invalid_argument", "a process selector (pid or tag) is required")


def _require_running(agent: AgentClient, pid: int) -> None:
    if not any(p.get("pid") == pid for p in running(agent)):
        raise c.ConnectError("not_found", f"process with pid {pid} not found")


def _end_event(exit_code: int | None, sig: int | None) -> dict[str, Any]:
    if sig:
        status = SIGNAL_STATUS.get(sig, f"signal: {sig}")
        return {"event": {"end": {"exitCode": -1, "exited": False, "status": status}}}
    code = exit_code or 0
    return {"event": {"end": {"exitCode": code, "exited": True,
                              "status": f"exit status {code}"}}}


# ------------------------------------------------------------------------ streams


def _stream_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type=c.STREAM,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _failed_stream(err: c.ConnectError) -> StreamingResponse:
    async def once() -> AsyncIterator[bytes]:
        yield c.end_of_stream(err)
    return _stream_response(once())


async def _first_message(request: Request) -> dict[str, Any]:
    async for message in c.stream_messages(request):
        return message
    return {}


def _follow(request: Request, ctx: EnvdContext, handle: ProcessHandle,
            deadline_s: float | None) -> StreamingResponse:
    """Stream ``handle``'s events (start already known) until exit, deadline or disconnect."""
    live = live_of(request)
    keepalive = _keepalive_interval(request)

    async def events() -> AsyncIterator[bytes]:
        finished = exited = False
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        last = time.monotonic()
        try:
            yield c.envelope({"event": {"start": {"pid": handle.pid}}})
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    await anyio.to_thread.run_sync(handle.kill, signal.SIGKILL)
                    yield c.end_of_stream(c.ConnectError(
                        "deadline_exceeded", f"the command ran past its timeout "
                        f"({deadline_s:g} s) and was killed"))
                    finished = True
                    return
                event = await anyio.to_thread.run_sync(handle.next_event, POLL_S)
                if event is None:
                    if time.monotonic() - last >= keepalive:
                        last = time.monotonic()
                        yield c.envelope({"event": {"keepalive": {}}})
                    continue
                last = time.monotonic()
                if event.kind in ("stdout", "stderr"):
                    yield c.envelope({"event": {"data": {event.kind: c.b64(event.data)}}})
                    continue
                finished = exited = True
                yield c.envelope(_end_event(event.exit_code, event.signal))
                yield c.end_of_stream()
                return
        except errors.SmolboxError as err:
            finished = True
            yield c.end_of_stream(c.from_smolbox(err))
        finally:
            live.drop(ctx.sandbox_id, handle, exited=exited)
            if not finished:
                with contextlib.suppress(errors.SmolboxError):
                    # The client's own deadline closed the stream (it may beat ours by
                    # a poll): the command timed out, so it dies as envd's would. Any
                    # other disconnect leaves it running for commands.connect.
                    if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S:
                        handle.kill(signal.SIGKILL)
                    handle.detach()

    return _stream_response(events())


def _keepalive_interval(request: Request) -> float:
    value = request.headers.get("keepalive-ping-interval", "")
    return float(value) if value.isdigit() and int(value) > 0 else KEEPALIVE_S


@router.post(f"{SERVICE}/Start")
async def start(request: Request) -> Response:
    try:
        ctx = context(request)
        message = await _first_message(request)
        config = message.get("process") or {}
        if message.get("pty"):
            raise c.ConnectError("unimplemented", "PTY processes are not supported by smolbox's "
                                 "envd; run commands without a pty (commands.run)")
        cmd = config.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            raise c.ConnectError("invalid_argument", "process.cmd is required")
        args = [str(a) for a in (config.get("args") or [])]
        envs = {str(k): str(v) for k, v in (config.get("envs") or {}).items()}
        cwd = config.get("cwd")
        tag = message.get("tag")

        def spawn() -> ProcessHandle:
            agent = agent_of(ctx)
            handle = agent.spawn([cmd, *args], env=envs or None,
                                 cwd=ctx.path(cwd) if cwd else None, user=ctx.user)
            if not message.get("stdin"):
                handle.close_stdin()
            return handle

        handle = await anyio.to_thread.run_sync(spawn)
    except RPC_FAILURES as failure:
        return _failed_stream(connect_error(failure))
    live_of(request).put(ctx.sandbox_id, handle, str(tag) if tag else None)
    return _follow(request, ctx, handle, c.timeout_s(request))


@router.post(f"{SERVICE}/Connect")
async def connect_process(request: Request) -> Response:
    try:
        ctx = context(request)
        message = await _first_message(request)
        live = live_of(request)
        pid = _selected_pid(live, ctx, message)

        def attach() -> ProcessHandle:
            agent = agent_of(ctx)
            _require_running(agent, pid)
            return agent.attach(pid)

        handle = await anyio.to_thread.run_sync(attach)
    except RPC_FAILURES as failure:
        return _failed_stream(connect_error(failure))
    previous = live.get(ctx.sandbox_id, pid)
    live.put(ctx.sandbox_id, handle)
    if previous is not None:
        previous.detach()  # the guest now reports to the new handle
    return _follow(request, ctx, handle, c.timeout_s(request))


# ------------------------------------------------------------------------ unary



def _with_handle(request: Request, ctx: EnvdContext, message: dict[str, Any],
                 act: Callable[[ProcessHandle], None]) -> None:
    """Run ``act`` on the pid's listening handle, or on a short-lived attachment."""
    live = live_of(request)
    pid = _selected_pid(live, ctx, message)
    agent = agent_of(ctx)
    _require_running(agent, pid)
    handle = live.get(ctx.sandbox_id, pid)
    if handle is not None:
        act(handle)
        return
    temporary = agent.attach(pid)
    try:
        act(temporary)
    finally:
        temporary.detach()


@router.post(f"{SERVICE}/List")
async def list_processes(request: Request) -> Response:
    live = live_of(request)

    def work(ctx: EnvdContext, _message: dict[str, Any]) -> dict[str, Any]:
        listed = []
        for proc in running(agent_of(ctx)):
            argv = [str(a) for a in proc.get("argv") or []]
            pid = int(proc.get("pid") or 0)
            entry: dict[str, Any] = {"pid": pid, "config": {
                "cmd": argv[0] if argv else "", "args": argv[1:],
                "envs": proc.get("env") or {}}}
            if proc.get("cwd"):
                entry["config"]["cwd"] = proc["cwd"]
            tag = live.tag_of(ctx.sandbox_id, pid)
            if tag:
                entry["tag"] = tag
            listed.append(entry)
        return {"processes": listed}

    return await unary(request, work)


@router.post(f"{SERVICE}/SendInput")
async def send_input(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        data = message.get("input") or {}
        if "pty" in data:
            raise c.ConnectError("unimplemented", "PTY input is not supported")
        payload = c.unb64(data.get("stdin"))
        _with_handle(request, ctx, message, lambda h: h.send_stdin(payload))
        return {}

    return await unary(request, work)


@router.post(f"{SERVICE}/CloseStdin")
async def close_stdin(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        _with_handle(request, ctx, message, lambda h: h.close_stdin())
        return {}

    return await unary(request, work)


@router.post(f"{SERVICE}/SendSignal")
async def send_signal(request: Request) -> Response:
    def work(ctx: EnvdContext, message: dict[str, Any]) -> dict[str, Any]:
        sig = SIGNALS.get(message.get("signal"))
        if sig is None:
            raise c.ConnectError("invalid_argument", f"unknown signal {message.get('signal')!r}")
        _with_handle(request, ctx, message, lambda h: h.kill(sig))
        return {}

    return await unary(request, work)


@router.post(f"{SERVICE}/Update")
async def update(request: Request) -> Response:
    return c.unary_error(c.ConnectError("unimplemented", "PTY resize is not supported"))


@router.post(f"{SERVICE}/StreamInput")
async def stream_input(request: Request) -> Response:
    """Client stream: ``start{process}``, then ``data{input}`` chunks and keepalives."""
    try:
        ctx = context(request)
        selector: dict[str, Any] | None = None
        async for message in c.stream_messages(request):
            if "start" in message:
                selector = message["start"] or {}
            elif "data" in message:
                if selector is None:
                    raise c.ConnectError("invalid_argument", "the stream must begin with start")
                data = (message["data"] or {}).get("input") or {}
                if "pty" in data:
                    raise c.ConnectError("unimplemented", "PTY input is not supported")
                chunk, chosen = c.unb64(data.get("stdin")), selector

                def send(chunk: bytes = chunk, chosen: dict[str, Any] = chosen) -> None:
                    _with_handle(request, ctx, chosen, lambda h: h.send_stdin(chunk))

                await anyio.to_thread.run_sync(send)  # delivered as it arrives
        if selector is None:
            raise c.ConnectError("invalid_argument", "the stream must begin with start")
    except RPC_FAILURES as failure:
        return _failed_stream(connect_error(failure))

    async def done() -> AsyncIterator[bytes]:
        yield c.envelope({})
        yield c.end_of_stream()
    return _stream_response(done())


"""RemoteBackend: the SDK over HTTP to ``smolbox serve`` (httpx).

Why errors come back as the same classes: the server sends ``err.to_dict()`` with
``err.http_status``; :func:`errors.from_wire` rebuilds the catalogue class, so
``except VMNotFoundError`` works identically on both backends. A status without a
smolbox body (a proxy's 502, say) becomes its family class via
``errors.error_for_status``; transport failures become ``ConnectionError``.

Retries: only requests marked idempotent (GET/PUT/DELETE, and nothing that
creates) are retried, on ConnectionError and 408/429/502/503/504, with the
:class:`RetryPolicy`'s capped backoff or the server's ``Retry-After``.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import httpx

from smolbox import errors
from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.config import MachineConfig
from smolbox.sdk.backend import Command, ShellSession
from smolbox.sdk.models import (
    ExecEventModel,
    ExecRequest,
    ExecResultModel,
    FileStatModel,
    MachineInfo,
    SnapshotInfo,
    StopResult,
)
from smolbox.sdk.retry import RetryPolicy

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
LONG = httpx.Timeout(None, connect=5.0)  # create, fork, snapshot, streams: no read limit
UPLOAD_CHUNK = 1 << 20


def error_from_response(response: httpx.Response) -> errors.SmolboxError:
    """The catalogue error a non-2xx response stands for (body read already)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) \
            and "code" in body["error"]:
        return errors.from_wire(body)
    cls = errors.error_for_status(response.status_code)
    err = cls.__new__(cls)
    errors.SmolboxError.__init__(
        err, f"HTTP {response.status_code} from {response.request.url}",
        details={"status": response.status_code, "body": response.text[:500]})
    return err


def _cmd(cmd: Command) -> list[str] | str:
    return cmd if isinstance(cmd, str) else list(cmd)


class RemoteBackend:
    """Machines on a smolbox server.

    ``url`` and ``token`` default to ``SMOLBOX_URL`` and ``SMOLBOX_TOKEN``;
    ``transport`` and ``retry`` customise httpx and the retry policy.

    Every method raises the same catalogue errors as :class:`LocalBackend` (rebuilt
    from the server's body), plus ``ConnectionError`` when the server cannot be
    reached or the connection breaks, ``RequestTimeoutError`` when it does not answer
    in time, ``AuthError`` for a wrong token, ``RateLimitedError`` / ``UnavailableError``
    for the server's (or a proxy's) 429/5xx once retries are spent. Without a URL the
    constructor raises ``ValidationError``.
    """

    name = "remote"

    def __init__(self, url: str | None = None, *, token: str | None = None,
                 retry: RetryPolicy | None = None, timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        base = url or os.environ.get("SMOLBOX_URL")
        if not base:
            raise errors.ValidationError(
                "No server URL: pass url= or set SMOLBOX_URL", field="url",
                help="Start a server with `smolbox serve` and set SMOLBOX_URL to its address.")
        token = token if token is not None else os.environ.get("SMOLBOX_TOKEN")
        self.url = base.rstrip("/")
        self._token = token
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": "smolbox-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.url + "/v1", headers=headers,
                                    timeout=timeout, transport=transport)

    # ------------------------------------------------------------------- core
    def _send(self, method: str, path: str, *, idempotent: bool, stream: bool = False,
              **kwargs: Any) -> httpx.Response:
        """One request with retries; returns a 2xx response or raises a catalogue error."""
        attempt = 0
        while True:
            attempt += 1
            try:
                request = self._client.build_request(method, path, **kwargs)
                response = self._client.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                err: errors.SmolboxError = errors.RequestTimeoutError(
                    f"No answer from {self.url} in time ({type(exc).__name__})",
                    operation=f"{method} {path}", timeout_seconds=0.0,
                    help="Raise the client timeout, or check the server's load.")
                retry_after = None
            except httpx.TransportError as exc:
                err = errors.ConnectionError(
                    f"Cannot reach the smolbox server at {self.url}: {exc}", url=self.url)
                retry_after = None
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                err = error_from_response(response)
                retry_after = response.headers.get("Retry-After")
                if not (idempotent and self.retry.should_retry_status(response.status_code,
                                                                      attempt)):
                    raise err
                self.retry.sleep(self.retry.delay(attempt, retry_after))
                continue
            if not (idempotent and self.retry.can_retry(attempt)):
                raise err
            self.retry.sleep(self.retry.delay(attempt, retry_after))

    def _json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        response = self._send(method, path, idempotent=idempotent, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise errors.InternalError(
                f"The server sent a response that is not JSON for {method} {path}",
                details={"body": response.text[:500]}) from None

    @contextmanager
    def _stream(self, method: str, path: str, *, idempotent: bool,
                **kwargs: Any) -> Iterator[httpx.Response]:
        response = self._send(method, path, idempotent=idempotent, stream=True, **kwargs)
        try:
            yield response
        except httpx.TransportError as exc:
            raise errors.ConnectionError(
                f"The connection to {self.url} broke during {method} {path}: {exc}",
                url=self.url) from None
        finally:
            response.close()

    # --------------------------------------------------------------- machines
    def create(self, config: MachineConfig, *, start: bool = True) -> MachineInfo:
        """``POST /machines`` with the config's non-default fields (never retried).

        Raises ``CapacityExhaustedError``, ``VMAlreadyExistsError``, ``ImageNotFoundError``,
        ``OperationTimeoutError`` (boot), ``ConnectionError``.
        """
        body = config.model_dump(mode="json", exclude_defaults=True)
        data = self._json("POST", "/machines", idempotent=False, json=body,
                          params={"start": start}, timeout=LONG)
        return MachineInfo.model_validate(data)

    def get(self, vm: str) -> MachineInfo:
        """The machine's record. Raises ``VMNotFoundError``, ``ConnectionError``."""
        return self.info(vm)

    def list(self, states: set[str] | None = None) -> builtins.list[MachineInfo]:
        """All machines, or those in one of ``states``. Raises ``ConnectionError``."""
        params = {"state": sorted(states)} if states else None
        data = self._json("GET", "/machines", idempotent=True, params=params)
        return [MachineInfo.model_validate(item) for item in data]

    def info(self, vm: str) -> MachineInfo:
        """The record plus live details. Raises ``VMNotFoundError``, ``ConnectionError``."""
        return MachineInfo.model_validate(self._json("GET", f"/machines/{vm}", idempotent=True))

    def _action(self, vm: str, action: str, **params: Any) -> Any:
        return self._json("POST", f"/machines/{vm}/{action}", idempotent=False,
                          params=params or None, timeout=LONG)

    def start(self, vm: str) -> MachineInfo:
        """Boot a stopped machine. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``CapacityExhaustedError``, ``ConnectionError``."""
        return MachineInfo.model_validate(self._action(vm, "start"))

    def stop(self, vm: str, *, graceful: bool = True) -> str:
        """Stop (disk kept); the shutdown step that worked. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``ConnectionError``."""
        return StopResult.model_validate(self._action(vm, "stop", graceful=graceful)).stopped_by

    def restart(self, vm: str) -> MachineInfo:
        """Stop, then start. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``ConnectionError``."""
        return MachineInfo.model_validate(self._action(vm, "restart"))

    def pause(self, vm: str) -> MachineInfo:
        """Freeze the vCPUs. Raises ``VMNotFoundError``, ``InvalidTransitionError``,
        ``ConnectionError``."""
        return MachineInfo.model_validate(self._action(vm, "pause"))

    def set_timeout(self, vm: str, seconds: float | None) -> MachineInfo:
        """End the lifetime ``seconds`` from now (None: never). Raises
        ``VMNotFoundError``, ``ValidationError``, ``ConnectionError``."""
        return MachineInfo.model_validate(self._json(
            "POST", f"/machines/{vm}/timeout", idempotent=True, json={"timeout": seconds}))

    def resume(self, vm: str) -> MachineInfo:
        """Continue a paused machine. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``ConnectionError``."""
        return MachineInfo.model_validate(self._action(vm, "resume"))

    def delete(self, vm: str, *, force: bool = False) -> None:
        """Delete the machine (``force``: no graceful shutdown; retried, DELETE is
        idempotent). Raises ``VMNotFoundError``, ``ConnectionError``."""
        self._send("DELETE", f"/machines/{vm}", idempotent=True, params={"force": force},
                   timeout=LONG)

    def logs(self, vm: str, *, follow: bool = False) -> Iterator[str]:
        """The serial console's text, streamed. Raises ``VMNotFoundError``,
        ``ConnectionError``."""
        with self._stream("GET", f"/machines/{vm}/logs", idempotent=True,
                          params={"follow": follow}, timeout=LONG) as response:
            yield from response.iter_text()

    # --------------------------------------------------------------- commands
    def _exec_body(self, cmd: Command, env: dict[str, str] | None, cwd: str | None,
                   user: str | None, stdin: bytes | None, timeout: float | None) -> Any:
        import base64

        request = ExecRequest(cmd=_cmd(cmd), env=env, cwd=cwd, user=user, timeout=timeout,
                              stdin_b64=None if stdin is None
                              else base64.b64encode(stdin).decode())
        return request.model_dump(mode="json", exclude_none=True)

    def exec(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
             cwd: str | None = None, user: str | None = None, stdin: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a command to completion (never retried). Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``OperationTimeoutError``, ``ValidationError``,
        ``ConnectionError``."""
        data = self._json("POST", f"/machines/{vm}/exec", idempotent=False,
                          json=self._exec_body(cmd, env, cwd, user, stdin, timeout),
                          timeout=LONG)
        return ExecResultModel.model_validate(data).result()

    def exec_stream(self, vm: str, cmd: Command, *, env: dict[str, str] | None = None,
                    cwd: str | None = None, user: str | None = None,
                    stdin: bytes | None = None,
                    timeout: float | None = None) -> Iterator[ExecEvent]:
        """Output events over server-sent events, then ``exit``. Raises what :meth:`exec`
        raises; ``ConnectionError`` if the stream ends without an exit event."""
        body = self._exec_body(cmd, env, cwd, user, stdin, timeout)
        with self._stream("POST", f"/machines/{vm}/exec/stream", idempotent=False, json=body,
                          timeout=LONG) as response:
            for event, data in _sse(response.iter_lines()):
                if event == "error":
                    raise errors.from_wire(data)
                parsed = ExecEventModel.model_validate_json(data).event()
                yield parsed
                if parsed.kind == "exit":
                    return
        raise errors.ConnectionError(
            f"The exec stream from {self.url} ended without an exit event", url=self.url)

    def shell(self, vm: str, *, command: builtins.list[str] | None = None, rows: int = 24,
              cols: int = 80, env: dict[str, str] | None = None) -> ShellSession:
        """A terminal over the server's WebSocket endpoint. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``ConnectionError``; ``NotSupportedError`` for ``env``
        (the endpoint takes no environment)."""
        from smolbox.sdk.remote_shell import RemoteShell

        if env:
            raise errors.NotSupportedError(
                "Setting the environment of a remote shell is not supported",
                operation="shell", reason="the WebSocket endpoint takes no environment",
                help="Export the variables inside the shell, or use exec(env=...).")
        return RemoteShell.open(self.url, vm, token=self._token, command=command, rows=rows,
                                cols=cols)

    # ------------------------------------------------------------------ files
    def write_file(self, vm: str, path: str, data: bytes | BinaryIO, *,
                   mode: int = 0o644) -> None:
        """Upload a guest file (bytes are retried, a stream is sent once). Raises
        ``VMNotFoundError``, ``ValidationError``, ``GuestFileError``, ``ConnectionError``."""
        if isinstance(data, bytes | bytearray | memoryview):
            content: Any = bytes(data)
            idempotent = True
        else:
            content = _chunks(data)  # a stream can be sent once: no retries
            idempotent = False
        self._send("PUT", f"/machines/{vm}/files/content", idempotent=idempotent,
                   params={"path": path, "mode": mode}, content=content,
                   headers={"Content-Type": "application/octet-stream"}, timeout=LONG)

    def read_file(self, vm: str, path: str) -> Iterator[bytes]:
        """A guest file, streamed in chunks. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``, ``ConnectionError``."""
        with self._stream("GET", f"/machines/{vm}/files/content", idempotent=True,
                          params={"path": path}, timeout=LONG) as response:
            yield from response.iter_bytes()

    def list_dir(self, vm: str, path: str) -> builtins.list[FileStat]:
        """A guest directory's entries. Raises ``VMNotFoundError``,
        ``GuestFileNotFoundError``, ``ConnectionError``."""
        data = self._json("GET", f"/machines/{vm}/files/list", idempotent=True,
                          params={"path": path})
        return [FileStatModel.model_validate(item).stat() for item in data]

    def stat(self, vm: str, path: str) -> FileStat:
        """A guest path's metadata. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``,
        ``ConnectionError``."""
        data = self._json("GET", f"/machines/{vm}/files/stat", idempotent=True,
                          params={"path": path})
        return FileStatModel.model_validate(data).stat()

    def mkdir(self, vm: str, path: str, *, parents: bool = True) -> None:
        """Make a guest directory. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``,
        ``ConnectionError``."""
        self._send("POST", f"/machines/{vm}/files/mkdir", idempotent=True,
                   params={"path": path, "parents": parents})

    def remove(self, vm: str, path: str, *, recursive: bool = False) -> None:
        """Remove a guest path. Raises ``VMNotFoundError``, ``GuestFileNotFoundError``,
        ``ConnectionError``."""
        self._send("DELETE", f"/machines/{vm}/files", idempotent=True,
                   params={"path": path, "recursive": recursive})

    # -------------------------------------------------------------- snapshots
    def snapshot(self, vm: str, name: str) -> SnapshotInfo:
        """Save memory and disk as ``name``. Raises ``VMNotFoundError``,
        ``InvalidTransitionError``, ``SnapshotAlreadyExistsError``, ``ConnectionError``."""
        data = self._json("POST", f"/machines/{vm}/snapshots", idempotent=False,
                          json={"name": name}, timeout=LONG)
        return SnapshotInfo.model_validate(data)

    def list_snapshots(self, vm: str | None = None) -> builtins.list[SnapshotInfo]:
        """All snapshots, or those of ``vm``. Raises ``ConnectionError``."""
        data = self._json("GET", "/snapshots", idempotent=True,
                          params={"vm": vm} if vm else None)
        return [SnapshotInfo.model_validate(item) for item in data]

    def get_snapshot(self, name: str) -> SnapshotInfo:
        """One snapshot. Raises ``SnapshotNotFoundError``, ``ConnectionError``."""
        return SnapshotInfo.model_validate(self._json("GET", f"/snapshots/{name}",
                                                      idempotent=True))

    def delete_snapshot(self, name: str) -> None:
        """Delete a snapshot. Raises ``SnapshotNotFoundError``, ``ConnectionError``."""
        self._send("DELETE", f"/snapshots/{name}", idempotent=True)

    def fork(self, snapshot: str, count: int = 1, *, names: builtins.list[str] | None = None,
             env: dict[str, str] | None = None) -> builtins.list[MachineInfo]:
        """``count`` machines from a snapshot, all or nothing (never retried). Raises
        ``SnapshotNotFoundError``, ``CapacityExhaustedError``, ``ConnectionError``."""
        body: dict[str, Any] = {"count": count}
        if names is not None:
            body["names"] = names
        if env is not None:
            body["env"] = env
        data = self._json("POST", f"/snapshots/{snapshot}/fork", idempotent=False, json=body,
                          timeout=LONG)
        return [MachineInfo.model_validate(item) for item in data]

    def restore(self, vm: str, snapshot: str) -> MachineInfo:
        """Put the machine back to a snapshot. Raises ``VMNotFoundError``,
        ``SnapshotNotFoundError``, ``InvalidTransitionError``, ``ConnectionError``."""
        data = self._json("POST", f"/machines/{vm}/restore", idempotent=False,
                          json={"snapshot": snapshot}, timeout=LONG)
        return MachineInfo.model_validate(data)

    # ------------------------------------------------------------------ misc
    def healthz(self) -> dict[str, Any]:
        """The server's ``/healthz`` body (one try). Raises ``ConnectionError`` when the
        server cannot be reached, else the status's catalogue error."""
        try:
            response = self._client.get(self.url + "/healthz")
        except httpx.TransportError as exc:
            raise errors.ConnectionError(
                f"Cannot reach the smolbox server at {self.url}: {exc}", url=self.url) from None
        if not response.is_success:
            raise error_from_response(response)
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(UPLOAD_CHUNK):
        yield chunk


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent event lines."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield event, "\n".join(data)


__all__ = ["RemoteBackend", "error_from_response"]

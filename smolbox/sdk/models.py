"""The wire schema: one definition of what machines, snapshots and results look like.

Why here and shared: the REST server uses these models as request bodies and
response models (so the OpenAPI document is exact), the RemoteBackend parses
responses with them, and the LocalBackend builds them from store records. One
schema means the two backends cannot drift apart in what they return.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.config import MACHINE_ID_PATTERN
from smolbox.store import MachineRecord, SnapshotRecord

BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MachineWarning(_Wire):
    """A non-fatal condition worth showing to the user (e.g. KVM_UNAVAILABLE)."""

    code: str
    message: str | None = None


class MachineInfo(_Wire):
    """A machine as users see it: identity, state, image and its configuration."""

    id: str
    name: str
    state: str
    image: str
    image_version: str | None = None
    accelerator: str | None = None
    pid: int | None = None
    ip: str | None = None
    created_at: float
    updated_at: float
    error_reason: str | None = None
    source_snapshot: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    warnings: list[MachineWarning] = Field(default_factory=list)
    # QEMU's own run state (``running``, ``paused``, ``io-error``…), from ``info`` only
    vmm_status: str | None = None
    #: Epoch seconds when the machine's lifetime ends (``MachineConfig.timeout``,
    #: ``set_timeout``); None: it lives until deleted.
    expires_at: float | None = None

    @classmethod
    def from_record(cls, record: MachineRecord) -> MachineInfo:
        return cls(
            id=record.id, name=record.name, state=str(record.state), image=record.image_ref,
            image_version=record.image_version, accelerator=record.accelerator,
            pid=record.pid, ip=record.ip, created_at=record.created_at,
            updated_at=record.updated_at, error_reason=record.error_reason,
            source_snapshot=record.source_snapshot, config=record.config,
            expires_at=record.expires_at,
        )


class SnapshotInfo(_Wire):
    """A snapshot: RAM + devices + disk of a machine at one moment, forkable."""

    id: str
    name: str
    vm_id: str | None = None
    state: str
    size: int | None = None
    created_at: float
    image: str | None = None
    image_version: str | None = None
    memory_mib: int | None = None
    vcpus: int | None = None
    template: bool = False

    @classmethod
    def from_record(cls, record: SnapshotRecord) -> SnapshotInfo:
        manifest = record.manifest
        return cls(
            id=record.id, name=record.name, vm_id=record.vm_id, state=str(record.state),
            size=record.size, created_at=record.created_at, image=manifest.get("image"),
            image_version=manifest.get("image_version"),
            memory_mib=manifest.get("memory_mib"), vcpus=manifest.get("vcpus"),
            template=bool(manifest.get("template", False)),
        )


# ------------------------------------------------------------------------ requests


class ExecRequest(_Wire):
    """One command to run; ``cmd`` as a string runs through ``/bin/sh -c``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cmd: list[str] | str = Field(min_length=1)
    env: dict[str, str] | None = None
    cwd: str | None = Field(default=None, pattern=r"^/")
    user: str | None = None
    stdin_b64: str | None = Field(default=None, pattern=BASE64_PATTERN,
                                  description="Standard input, base64.")
    timeout: float | None = Field(default=None, gt=0, le=86400)

    @field_validator("stdin_b64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise ValueError(f"stdin_b64 is not valid base64: {exc}") from None
        return value

    def stdin_bytes(self) -> bytes | None:
        return None if self.stdin_b64 is None else base64.b64decode(self.stdin_b64)


class SnapshotRequest(_Wire):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MACHINE_ID_PATTERN)


class ForkRequest(_Wire):
    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=1, ge=1, le=64)
    names: list[str] | None = None
    env: dict[str, str] | None = None


class TimeoutRequest(_Wire):
    """Body of ``POST /v1/machines/{vm}/timeout``: seconds from now, or null for never."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float | None = Field(gt=0, le=30 * 86400)


class RestoreRequest(_Wire):
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot: str = Field(min_length=1)


# ----------------------------------------------------------------------- responses


class ExecResultModel(_Wire):
    """An ExecResult on the wire; ``*_b64`` keep binary output byte-exact."""

    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_b64: str
    stderr_b64: str
    duration: float
    command: list[str]
    pid: int

    @classmethod
    def of(cls, result: ExecResult) -> ExecResultModel:
        return cls(
            exit_code=result.exit_code, signal=result.signal, stdout=result.stdout,
            stderr=result.stderr, stdout_b64=base64.b64encode(result.stdout_bytes).decode(),
            stderr_b64=base64.b64encode(result.stderr_bytes).decode(),
            duration=result.duration, command=list(result.command), pid=result.pid,
        )

    def result(self) -> ExecResult:
        return ExecResult(
            exit_code=self.exit_code, signal=self.signal,
            stdout_bytes=base64.b64decode(self.stdout_b64),
            stderr_bytes=base64.b64decode(self.stderr_b64), duration=self.duration,
            command=list(self.command), pid=self.pid,
        )


class ExecEventModel(_Wire):
    """One SSE event of a streamed exec (the SSE ``event:`` field repeats ``kind``)."""

    kind: str
    data_b64: str = ""
    exit_code: int | None = None
    signal: int | None = None

    @classmethod
    def of(cls, event: ExecEvent) -> ExecEventModel:
        return cls(kind=event.kind, data_b64=base64.b64encode(event.data).decode(),
                   exit_code=event.exit_code, signal=event.signal)

    def event(self) -> ExecEvent:
        kind = self.kind if self.kind in ("stdout", "stderr") else "exit"
        return ExecEvent(kind, base64.b64decode(self.data_b64),  # type: ignore[arg-type]
                         exit_code=self.exit_code, signal=self.signal)


class FileStatModel(_Wire):
    path: str
    name: str
    type: str
    size: int
    mode: int
    mtime: float
    uid: int = 0
    gid: int = 0
    target: str | None = None

    @classmethod
    def of(cls, stat: FileStat) -> FileStatModel:
        return cls(path=stat.path, name=stat.name, type=stat.type, size=stat.size,
                   mode=stat.mode, mtime=stat.mtime, uid=stat.uid, gid=stat.gid,
                   target=stat.target)

    def stat(self) -> FileStat:
        kind = self.type if self.type in ("file", "dir", "symlink") else "other"
        return FileStat(path=self.path, name=self.name, type=kind,  # type: ignore[arg-type]
                        size=self.size, mode=self.mode, mtime=self.mtime, uid=self.uid,
                        gid=self.gid, target=self.target)


class StopResult(_Wire):
    id: str
    stopped_by: str


class ErrorBody(_Wire):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    help: str
    retryable: bool = False


class ErrorEnvelope(_Wire):
    """Every error response: ``{"error": {code, message, details, help, retryable}}``."""

    error: ErrorBody

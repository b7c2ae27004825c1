"""Machine configuration models (pydantic v2, closed to unknown fields).

Why strict: configs come from AI agents and REST clients; a typo such as
``memroy_mib`` must fail loudly instead of silently giving the default. Every
model converts pydantic's error into the catalogue's :class:`ValidationError`
naming the dotted field path (``network.allow.0.cidr``), so no caller ever sees a
raw pydantic exception.
"""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from typing import Any, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smolbox.errors import ValidationError

MACHINE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}(:[A-Za-z0-9._-]{1,64})?$")


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "config"


def convert_pydantic_error(err: pydantic.ValidationError, model: str) -> ValidationError:
    """First problem becomes the message; all of them stay in ``details.errors``."""
    problems = err.errors(include_url=False)
    first = problems[0]
    field = _field_path(tuple(first["loc"]))
    value = first.get("input")
    message = f"Invalid {model}: {field}: {first['msg']}"
    return ValidationError(
        message,
        field=field,
        value=value if isinstance(value, str | int | float | bool | type(None)) else repr(value),
        details={"errors": [
            {"field": _field_path(tuple(p["loc"])), "message": p["msg"], "type": p["type"]}
            for p in problems
        ]},
    )


# pydantic calls an overridden __init__ for nested models too; only the outermost
# call converts, so the field path stays complete (``network.allow.0.cidr``).
_NESTING: ContextVar[int] = ContextVar("smolbox_config_nesting", default=0)


class StrictModel(BaseModel):
    """Base for every config model: forbids unknown fields, raises catalogue errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def __init__(self, /, **data: Any) -> None:
        token = _NESTING.set(_NESTING.get() + 1)
        try:
            super().__init__(**data)
        except pydantic.ValidationError as err:
            if token.old_value not in (0, token.MISSING):
                raise
            raise convert_pydantic_error(err, type(self).__name__) from None
        finally:
            _NESTING.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except pydantic.ValidationError as err:
            raise convert_pydantic_error(err, cls.__name__) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except pydantic.ValidationError as err:
            raise convert_pydantic_error(err, cls.__name__) from None


class Mount(StrictModel):
    """A host directory shared into the guest (virtiofs). Blocks snapshots of the machine."""

    host_path: str = Field(min_length=1)
    guest_path: str = Field(pattern=r"^/[^\x00]*$", min_length=2)
    readonly: bool = True


class PortForward(StrictModel):
    """Host port -> guest port; the host side binds loopback unless told otherwise."""

    host: int = Field(ge=1, le=65535)
    guest: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    host_address: str = "127.0.0.1"

    @field_validator("host_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class EgressRule(StrictModel):
    """One allowed destination: a CIDR (v4 or v6), optionally limited to ports/protocol."""

    cidr: str
    ports: list[int] = Field(default_factory=list, max_length=64)
    protocol: Literal["tcp", "udp", "any"] = "any"

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return str(ipaddress.ip_network(value, strict=False))

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1-65535")
        return value


class NetworkPolicy(StrictModel):
    """How a machine reaches the network. Default: no NIC at all (untrusted code)."""

    mode: Literal["none", "user", "tap"] = "none"
    egress: Literal["open", "off", "allow"] = "off"
    allow: list[EgressRule] = Field(default_factory=list, max_length=256)
    dns: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.egress != "allow" and self.allow:
            raise ValueError("`allow` rules need egress='allow'")
        return self


class Timeouts(StrictModel):
    """Seconds allowed for each phase; None on exec means no limit."""

    boot: float = Field(default=60.0, gt=0, le=3600)
    exec: float | None = Field(default=None, gt=0, le=86400)
    stop: float = Field(default=10.0, gt=0, le=600)


class MachineConfig(StrictModel):
    """Everything needed to create a machine."""

    name: str | None = Field(default=None, pattern=MACHINE_ID_PATTERN)
    image: str = "default"
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=65536)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1_048_576)
    env: dict[str, str] = Field(default_factory=dict)
    mounts: list[Mount] = Field(default_factory=list, max_length=16)
    ports: list[PortForward] = Field(default_factory=list, max_length=64)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    labels: dict[str, str] = Field(default_factory=dict)
    from_template: bool = True
    #: Lifetime in seconds from the moment the machine is up; None: until deleted.
    timeout: float | None = Field(default=None, gt=0, le=30 * 86400)
    #: What expiry does: delete the machine, or pause it (memory kept).
    on_timeout: Literal["delete", "pause"] = "delete"

    @property
    def uses_template(self) -> bool:
        """Whether this machine can start as a template clone (and so from the warm
        pool): machines with a NIC, forwarded ports or mounts have devices the
        template does not have, and ``from_template=False`` asks for a cold boot."""
        return (self.from_template and self.network.mode == "none" and not self.mounts
                and not self.ports)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_REF.match(value):
            raise ValueError("image must look like NAME or NAME:VERSION")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} is not valid")
            if "\0" in item:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} is not valid")
            if len(item) > 256:
                raise ValueError(f"label {key} is longer than 256 characters")
        return value

    @model_validator(mode="after")
    def _ports_unique(self) -> Self:
        seen: set[tuple[str, int, str]] = set()
        for forward in self.ports:
            key = (forward.host_address, forward.host, forward.protocol)
            if key in seen:
                raise ValueError(f"host port {forward.host}/{forward.protocol} is forwarded twice")
            seen.add(key)
        return self

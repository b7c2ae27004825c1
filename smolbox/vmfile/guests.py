"""How provisioners reach a machine: the smolbox agent, or SSH for foreign images.

Why a protocol: the provisioners only need "run this, streaming" and "write this file";
the agent (:class:`AgentGuest`) and SSH (:mod:`smolbox.ssh`) both give that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from smolbox.channel.types import ExecEvent
from smolbox.engine.engine import Engine


class Guest(Protocol):
    """What a provisioner needs from a running machine."""

    def exec_stream(self, cmd: list[str] | str) -> Iterator[ExecEvent]: ...

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None: ...

    def close(self) -> None: ...


class AgentGuest:
    """A machine with the smolbox agent, through the engine."""

    def __init__(self, engine: Engine, vm: str) -> None:
        self.engine = engine
        self.vm = vm

    def exec_stream(self, cmd: list[str] | str) -> Iterator[ExecEvent]:
        return self.engine.exec_stream(self.vm, cmd)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.engine.write_file(self.vm, path, data, mode=mode)

    def close(self) -> None:
        """The engine keeps its agent connections; nothing to release here."""

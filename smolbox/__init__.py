"""smolbox: disposable, hardware-isolated Linux microVM sandboxes.

``from smolbox import Machine`` is the front door; the SDK names load lazily so
``import smolbox`` (e.g. for ``smolbox.errors``) stays cheap and cycle-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smolbox import errors
from smolbox.config import MachineConfig, NetworkPolicy

if TYPE_CHECKING:
    from smolbox.channel.types import ExecEvent, ExecResult
    from smolbox.sdk import AsyncMachine, LocalBackend, Machine, RemoteBackend, RetryPolicy

__all__ = ["AsyncMachine", "ExecEvent", "ExecResult", "LocalBackend", "Machine",
           "MachineConfig", "NetworkPolicy", "RemoteBackend", "RetryPolicy", "errors"]
__version__ = "0.1.0"

_LAZY = {"AsyncMachine", "ExecEvent", "ExecResult", "LocalBackend", "Machine", "RemoteBackend",
         "RetryPolicy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from smolbox import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'smolbox' has no attribute {name!r}")

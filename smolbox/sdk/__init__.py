"""The smolbox SDK: ``Machine`` / ``AsyncMachine`` over a local or remote backend.

>>> from smolbox import Machine
>>> with Machine.create() as m:
...     print(m.exec("echo hi").stdout)
"""

from smolbox.channel.types import ExecEvent, ExecResult, FileStat
from smolbox.sdk.aio import AsyncFiles, AsyncMachine, AsyncShellSession, AsyncSnapshot
from smolbox.sdk.backend import Backend, ShellSession
from smolbox.sdk.files import Files
from smolbox.sdk.local import LocalBackend
from smolbox.sdk.machine import Machine, Snapshot
from smolbox.sdk.models import MachineInfo, SnapshotInfo
from smolbox.sdk.remote import RemoteBackend
from smolbox.sdk.resolve import default_backend
from smolbox.sdk.retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY", "AsyncFiles", "AsyncMachine", "AsyncShellSession", "AsyncSnapshot", "Backend",
    "ExecEvent", "ExecResult", "FileStat", "Files", "LocalBackend", "Machine", "MachineInfo",
    "RemoteBackend", "RetryPolicy", "ShellSession", "Snapshot", "SnapshotInfo",
    "default_backend",
]

"""Host side of the guest agent protocol: :class:`AgentClient` and its result types."""

from smolbox.channel.client import AgentClient, ProcessHandle
from smolbox.channel.types import ExecEvent, ExecResult, FileStat

__all__ = ["AgentClient", "ExecEvent", "ExecResult", "FileStat", "ProcessHandle"]

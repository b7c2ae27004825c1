"""Result types of guest operations, as the SDK, CLI and server hand them to users.

Why frozen dataclasses: results cross threads (many execs on one client) and
layers (engine -> SDK -> REST); immutability makes them safe to share and cache.
Output is kept as bytes (byte-exact for binary output) with decoded views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from smolbox.errors import ExecutionError


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command: exit code or signal, and everything it printed."""

    exit_code: int | None
    signal: int | None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration: float = 0.0
    command: list[str] = field(default_factory=list)
    pid: int = 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    def assert_success(self) -> ExecResult:
        """Return self if the command exited 0, else raise :class:`ExecutionError`."""
        if not self.success:
            raise ExecutionError(
                self.command, self.exit_code if self.signal is None else -self.signal,
                stdout=self.stdout[-4096:], stderr=self.stderr[-4096:],
                details={"signal": self.signal},
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "signal": self.signal, "stdout": self.stdout,
                "stderr": self.stderr, "duration": self.duration, "success": self.success}


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed exec: a chunk of output, or the exit (always last)."""

    kind: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileStat:
    """Metadata of one guest path (``lstat``: symlinks are not followed)."""

    path: str
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float
    uid: int = 0
    gid: int = 0
    target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

"""An interactive terminal inside the guest, built on the agent's spawn + stdin.

Why a guest-side relay script: the agent runs processes on pipes and offers no
pseudo-terminal. Shells, editors and REPLs need a real tty (line editing, job
control, ``isatty()``), so we spawn ``python3`` (always in the image) with a tiny
stdlib script that opens a pty, runs the shell on it with the requested window
size, and relays bytes between the agent's pipes and the pty master. The host
side just moves raw bytes.

When its stdin ends the relay types ^D (end of input), and again whenever the
terminal has been quiet for a second (readline may swallow the first one);
the host ends a session by killing the relay, which closes the pty and hangs
up the shell, so a dropped CLI never leaves an orphaned shell in the guest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from smolbox.channel.client import AgentClient, ProcessHandle

# Runs in the guest as `python3 -c RELAY ROWS COLS ARGV...`. Stdlib only.
RELAY = r"""
import fcntl, os, pty, select, struct, sys, termios
rows, cols, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
pid, master = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.execvp(argv[0], argv)
open_in = True
while True:
    fds = [master] + ([0] if open_in else [])
    ready, _, _ = select.select(fds, [], [], None if open_in else 1.0)
    if not ready:  # input has ended and the terminal is quiet: type ^D again
        os.write(master, b"\x04")
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            open_in = False
            os.write(master, b"\x04")
        else:
            os.write(master, data)
    if master in ready:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if not data:
            break
        os.write(1, data)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""

DEFAULT_SHELL = ["/bin/bash", "-il"]


def relay_argv(command: list[str] | None, rows: int, cols: int) -> list[str]:
    return ["python3", "-c", RELAY, str(max(rows, 1)), str(max(cols, 1)),
            *(command or DEFAULT_SHELL)]


class AgentShell:
    """A ShellSession over a spawned relay; holds the engine's guest context open."""

    def __init__(self, guest: AbstractContextManager[AgentClient], command: list[str] | None,
                 rows: int, cols: int, env: dict[str, str] | None) -> None:
        self._guest = guest
        agent = guest.__enter__()
        try:
            self._handle: ProcessHandle = agent.spawn(
                relay_argv(command, rows, cols),
                env={"TERM": "xterm-256color", **(env or {})})
        except BaseException as err:
            guest.__exit__(type(err), err, err.__traceback__)
            raise
        self._exit_code: int | None = None
        self._closed = False
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        if data:
            self._handle.send_stdin(data)

    def close_input(self) -> None:
        self._handle.close_stdin()

    def output(self) -> Iterator[bytes]:
        for event in self._handle.events():
            if event.kind == "exit":
                self._exit_code = (event.exit_code if event.exit_code is not None
                                   else 128 + (event.signal or 0))
            elif event.data:
                yield event.data

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._handle.kill()
        finally:
            self._guest.__exit__(None, None, None)

    def __enter__(self) -> AgentShell:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

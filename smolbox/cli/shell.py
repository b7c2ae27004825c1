"""``smolbox shell NAME``: an interactive terminal in a machine.

The guest side is a pty relay (see :mod:`smolbox.sdk.pty`); here we put the local
terminal in raw mode and move bytes both ways until the shell exits, then pass
its exit code through. Keys like ^C go to the guest, as in ssh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import termios
import threading
import tty

import typer

from smolbox.cli.app import app
from smolbox.cli.client import sdk_backend
from smolbox.sdk.backend import ShellSession


@app.command()
def shell(name: str = typer.Argument(..., help="Machine to open a shell in."),
          command: list[str] = typer.Argument(None, help="Program to run instead of bash -il.")
          ) -> None:
    """Open an interactive shell (a real pty) in a running machine."""
    size = shutil.get_terminal_size()
    with sdk_backend() as backend:
        session = backend.shell(name, command=command or None, rows=size.lines,
                                cols=size.columns)
        try:
            code = relay(session)
        finally:
            session.close()
    sys.exit(code)  # the shell's own exit code, like ssh


def relay(session: ShellSession) -> int:
    """Copy stdin to the session and its output to stdout until it exits."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setraw(fd)
    pump = threading.Thread(target=_pump_input, args=(fd, session), daemon=True)
    try:
        pump.start()
        out = sys.stdout.buffer
        for chunk in session.output():
            out.write(chunk)
            out.flush()
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return session.exit_code if session.exit_code is not None else 1


def _pump_input(fd: int, session: ShellSession) -> None:
    with contextlib.suppress(OSError, Exception):
        while True:
            data = os.read(fd, 4096)
            if not data:
                session.close_input()
                return
            session.send(data)

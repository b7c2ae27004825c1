"""A real CLI session in tmux: create, exec, shell (type, read the screen), cp, errors, rm.

Why tmux: ``smolbox shell`` needs a real terminal on the host side (raw mode,
window size); tmux gives one we can type into and read back. Each command line
ends with a marker carrying ``$?`` so the test waits for completion and sees
exit codes. The CLI runs as separate processes on the session's SMOLBOX_HOME;
the test never talks to the machine's agent itself (one agent connection at a
time), it only cleans up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.engine.engine import Engine

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]
BOX = "tmux-box"
WAIT = 180.0  # generous bound for a shared 2-core TCG host; not a timing assertion


class Terminal:
    """One tmux session on a private server socket."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._markers = itertools.count(1)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "cli")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "cli", "-l", text)
        self.tmux("send-keys", "-t", "cli", "Enter")

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + WAIT
        while True:
            found = re.search(pattern, self.screen())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared:\n{self.screen()}")
            time.sleep(0.2)

    def run(self, command: str) -> int:
        """Type a host command line; return its exit status."""
        n = next(self._markers)
        self.type(f"{command}; echo __done_{n}:$?")
        return int(self.wait_for(rf"__done_{n}:(\d+)")[1])


@pytest.fixture
def terminal(engine: Engine, tmp_path: Path) -> Iterator[Terminal]:
    socket = f"smolbox-test-{os.getpid()}"
    bin_dir = str(Path(sys.executable).parent)
    env = ["env", f"PATH={bin_dir}:{os.environ['PATH']}", "PS1=host$ ", "TERM=xterm"]
    term = Terminal(socket)
    term.tmux("new-session", "-d", "-s", "cli", "-x", "200", "-y", "50",
              *env, "bash", "--norc", "--noprofile")
    try:
        yield term
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False,
                       capture_output=True)
        with contextlib.suppress(errors.VMNotFoundError):
            engine.delete(BOX, force=True)


def test_cli_session(terminal: Terminal, engine: Engine, tmp_path: Path) -> None:
    assert terminal.run(f"smolbox create --name {BOX}") == 0
    assert engine.get(BOX).state == "running"

    assert terminal.run(f"smolbox exec {BOX} -- sh -c 'echo exec-$((6*7))'") == 0
    terminal.wait_for(r"(?m)^exec-42$")

    # shell: a real pty in the guest; type commands and read them back from the screen
    terminal.type(f"smolbox shell {BOX}; echo __shell_done:$?")
    terminal.wait_for(rf"(?m)^root@{BOX}:~#")
    terminal.type("echo shell-$((6*7)); tty; stty size")
    terminal.wait_for(r"shell-42\s+/dev/pts/\d+\s+50 200")
    terminal.type("exit 7")
    terminal.wait_for(r"__shell_done:7")  # the shell's exit code passes through

    # cp both ways
    local = tmp_path / "in.txt"
    local.write_text("from the host\n")
    assert terminal.run(f"smolbox cp {local} {BOX}:/root/") == 0
    assert terminal.run(f"smolbox cp {BOX}:/root/in.txt {tmp_path}/out.txt") == 0
    assert (tmp_path / "out.txt").read_text() == "from the host\n"

    # errors: code, message and help on the screen, family exit code
    assert terminal.run("smolbox info no-such-box") == 3
    terminal.wait_for(r"error\[VM_NOT_FOUND\]: Machine 'no-such-box' not found")
    terminal.wait_for(r"help: List machines with `smolbox list`")
    assert terminal.run(f"smolbox cp {BOX}:/nope {tmp_path}/x") == 3
    terminal.wait_for(r"error\[GUEST_FILE_NOT_FOUND\]")

    assert terminal.run(f"smolbox rm {BOX}") == 0
    with pytest.raises(errors.VMNotFoundError):
        engine.get(BOX)

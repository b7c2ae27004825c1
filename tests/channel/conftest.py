"""Fixtures: the real agent (``python -m smolbox.guest.agent --socket``) as a subprocess.

Why a subprocess and not a thread: the agent forks commands, owns process
groups and must be killable mid-operation; only a real process shows that.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.channel import AgentClient
from tests.leakguard import SESSION_VAR, session_tag

from .hostile import HostileGuest


class AgentProcess:
    """One agent serving a unix socket in a private temp dir (short path: 107-byte limit)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or Path(tempfile.mkdtemp(prefix="sba-"))
        self.socket = self.dir / "agent.sock"
        self.root = self.dir / "root"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smolbox.guest.agent", "--socket", str(self.socket),
             "--root", str(self.root)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"SMOLBOX_READY", line
        # The agent hands commands a fresh environment: give them the session's tag
        # so the leak guard (tests/leakguard.py) sees a command a test left running.
        with self.connect() as client:
            client.set_env({SESSION_VAR: session_tag()})

    def connect(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient.connect(self.socket, vm_id="test-vm", timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess()
    yield proc
    proc.stop()


@pytest.fixture()
def private_agent() -> Iterator[AgentProcess]:
    """An agent a test may kill or shut down."""
    proc = AgentProcess()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with agent.connect() as c:
        yield c


@pytest.fixture()
def scratch(client: AgentClient) -> Iterator[str]:
    """A fresh directory for file tests (removed afterwards through the agent)."""
    path = tempfile.mkdtemp(prefix="sbf-")
    yield path
    with contextlib.suppress(Exception):
        shutil.rmtree(path)


@pytest.fixture()
def hostile() -> Iterator[HostileGuest]:
    """A fake guest agent that breaks the protocol on purpose (see ``hostile.py``)."""
    guest = HostileGuest()
    yield guest
    guest.close()
    assert not guest.errors

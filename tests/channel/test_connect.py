"""Connecting, identity, environment and shutdown."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

import pytest

from smolbox.channel import AgentClient
from smolbox.errors import (
    CommandExecutionUnavailableError,
    OperationTimeoutError,
    ValidationError,
)

from .conftest import AgentProcess


def test_missing_socket_is_unavailable() -> None:
    path = Path(tempfile.mkdtemp(prefix="sbc-")) / "none.sock"
    with pytest.raises(CommandExecutionUnavailableError) as info:
        AgentClient.connect(path, vm_id="vm-x", timeout=0.3)
    assert info.value.vm_id == "vm-x" and "not accepting" in info.value.reason
    path.parent.rmdir()


def test_socket_that_never_answers_times_out() -> None:
    """A QEMU whose guest never starts its agent: the socket accepts, nobody answers."""
    path = Path(tempfile.mkdtemp(prefix="sbc-")) / "mute.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    try:
        with pytest.raises(OperationTimeoutError) as info:
            AgentClient.connect(path, vm_id="vm-y", timeout=0.5)
        assert info.value.operation == "agent handshake" and info.value.timeout_seconds == 0.5
    finally:
        server.close()
        path.unlink()
        path.parent.rmdir()


def test_connect_waits_for_an_agent_that_starts_late() -> None:
    """The socket appears only after the client started trying (a booting guest)."""
    directory = Path(tempfile.mkdtemp(prefix="sba-"))
    holder: list[AgentProcess] = []
    starter = threading.Timer(0.3, lambda: holder.append(AgentProcess(directory)))
    starter.start()
    try:
        with AgentClient.connect(directory / "agent.sock", vm_id="late", timeout=15) as c:
            assert c.exec("echo up").stdout == "up\n"
    finally:
        starter.join()
        for proc in holder:
            proc.stop()


def test_ping_and_handshake_info(client: AgentClient) -> None:
    assert client.ping() > 0
    info = client.guest_info
    assert info["version"] == 1 and "exec" in info["caps"]
    assert client.connected


def test_set_identity_writes_hostname_and_machine_id(client: AgentClient,
                                                    agent: AgentProcess) -> None:
    client.set_identity("clone-7", "0123456789abcdef0123456789abcdef", b"\x01" * 64,
                        1_900_000_000_000_000_000)
    assert (agent.root / "etc/hostname").read_text() == "clone-7\n"
    assert (agent.root / "etc/machine-id").read_text() == "0123456789abcdef0123456789abcdef\n"
    client.sync_time()
    with pytest.raises(ValidationError) as info:
        client.set_identity("bad/name", "0" * 32, b"", 0)
    assert info.value.field == "hostname"
    with pytest.raises(ValidationError) as info:
        client.set_identity("ok", "not-hex", b"", 0)
    assert info.value.field == "machine_id"
    with pytest.raises(ValidationError):
        client.set_env({"bad name": "x"})


def test_shutdown_stops_the_agent(private_agent: AgentProcess) -> None:
    c = private_agent.connect()
    c.shutdown()
    assert private_agent.proc.wait(timeout=30) == 0
    assert not c.connected
    with pytest.raises(CommandExecutionUnavailableError):
        c.ping()

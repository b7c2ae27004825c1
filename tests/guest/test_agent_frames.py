"""The real agent (subprocess, unix-socket mode) spoken to frame by frame.

These cover what the AgentClient never does on purpose: broken frames from the
host side, a new HELLO in the middle of a session, cancelled transfers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smolbox.guest import protocol as p
from smolbox.guest.agent import find_port


class RawHost:
    """A bare-bones host end: send frames, read frames."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.decoder = p.FrameDecoder()

    def hello(self, version: int = p.VERSION, nonce: str = "n") -> dict[str, Any]:
        body = json.dumps({"version": version, "nonce": nonce}).encode()
        self.sock.sendall(p.HEADER.pack(p.MAGIC, version, p.HELLO, 0, 0, len(body)) + body)
        while True:
            frame = self.decoder.resync_hello()
            if frame is not None and frame.json().get("nonce") == nonce:
                return frame.json()
            self.decoder.feed(self.sock.recv(65536))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> p.Frame:
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            data = self.sock.recv(65536)
            assert data, "agent closed the connection"
            self.decoder.feed(data)

    def until(self, stream: int, ftype: int) -> p.Frame:
        while True:
            frame = self.frame()
            if frame.stream == stream and frame.type == ftype:
                return frame

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def agent_socket() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="sbr-"))
    path = directory / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "smolbox.guest.agent", "--socket", str(path),
                             "--root", str(directory / "root")], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"SMOLBOX_READY"
    yield path
    proc.kill()
    proc.wait()
    proc.stdout.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_broken_frame_gets_an_error_and_a_new_hello_recovers(agent_socket: Path) -> None:
    host = RawHost(agent_socket)
    host.hello()
    host.send(b"XX" + b"\0" * 20)
    err = host.until(0, p.ERROR)
    assert err.json()["kind"] == "protocol"
    host.hello(nonce="again")
    host.send(p.pack_json(p.REQUEST, 1, {"op": "ping"}))
    assert host.until(1, p.REPLY).json()["t"] > 0
    host.close()


def test_wrong_version_hello_is_refused(agent_socket: Path) -> None:
    host = RawHost(agent_socket)
    reply = host.hello(version=3)
    assert "unsupported protocol version" in reply["error"]
    host.close()


def test_frames_for_unknown_streams_and_bad_requests(agent_socket: Path) -> None:
    host = RawHost(agent_socket)
    host.hello()
    host.send(p.pack(p.STDIN, 42, b"nobody listens") + p.pack_json(p.CANCEL, 43, {}))
    host.send(p.pack_json(p.REQUEST, 1, {"op": "no-such-op"}))
    assert "unknown op" in host.until(1, p.ERROR).json()["message"]
    host.send(p.pack_json(p.REQUEST, 2, {"op": "exec", "argv": "not a list"}))
    assert host.until(2, p.ERROR).json()["kind"] == "request"
    host.send(p.pack(p.REQUEST, 3, b"{bad json"))
    assert host.until(3, p.ERROR).json()["kind"] == "protocol"
    host.send(p.pack_json(p.REQUEST, 4, {"op": "stat", "path": "relative"}))
    assert host.until(4, p.ERROR).json()["kind"] == "request"
    host.send(p.pack_json(p.REQUEST, 5, {"op": "ping"}))
    host.until(5, p.REPLY)
    host.close()


def test_new_hello_ends_the_old_session_and_its_foreground_processes(
        agent_socket: Path) -> None:
    host = RawHost(agent_socket)
    host.hello()
    host.send(p.pack_json(p.REQUEST, 1, {"op": "exec", "argv": ["sleep", "100"]}))
    pid = host.until(1, p.REPLY).json()["pid"]
    host.hello(nonce="second")  # same connection, new session
    for _ in range(200):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:  # gone (and reaped) between two looks
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the old session's process survived")
    host.close()


def test_cancelled_write_leaves_no_file(agent_socket: Path, tmp_path: Path) -> None:
    host = RawHost(agent_socket)
    host.hello()
    target = tmp_path / "never.bin"
    host.send(p.pack_json(p.REQUEST, 1, {"op": "write_file", "path": str(target)}))
    host.send(p.pack(p.DATA, 1, b"x" * 1000))
    host.send(p.pack_json(p.CANCEL, 1, {}))
    assert host.until(1, p.ERROR).json()["kind"] == "cancelled"
    assert list(tmp_path.iterdir()) == []
    host.close()


def test_disconnect_mid_write_removes_the_temp_file(agent_socket: Path, tmp_path: Path) -> None:
    host = RawHost(agent_socket)
    host.hello()
    host.send(p.pack_json(p.REQUEST, 1, {"op": "write_file", "path": str(tmp_path / "f")}))
    host.send(p.pack(p.DATA, 1, b"x" * 1000))
    host.close()
    for _ in range(200):
        if not list(tmp_path.iterdir()):
            break
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    again = RawHost(agent_socket)  # and the agent serves the next host
    again.hello()
    again.close()


def test_find_port_by_sysfs_name(tmp_path: Path) -> None:
    for port, name in (("vport0p1", "org.other"), ("vport1p2", p.PORT_NAME)):
        (tmp_path / port).mkdir()
        (tmp_path / port / "name").write_text(name + "\n")
    assert find_port(sysfs=str(tmp_path), dev="/dev") == "/dev/vport1p2"
    assert find_port("missing", sysfs=str(tmp_path)) is None


def test_init_announces_readiness_on_the_console() -> None:
    from smolbox.guest import init

    read_fd, write_fd = os.pipe()
    try:
        supervisor = init.Supervisor(write_fd)
        supervisor._handle_notes(b"R")
        supervisor._handle_notes(b"R")  # announced once
        assert os.read(read_fd, 100) == b"SMOLBOX_READY\n"
        assert not supervisor.power_off_requested
        supervisor._handle_notes(b"P")
        assert supervisor.power_off_requested
        for fd in (supervisor.notify_r, supervisor.notify_w, supervisor.wake_r,
                   supervisor.wake_w):
            os.close(fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)

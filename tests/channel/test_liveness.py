"""A guest whose agent goes silent never hangs the host: keepalives bound every wait."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from smolbox.channel import AgentClient, connection
from smolbox.errors import CommandExecutionUnavailableError
from smolbox.guest import protocol as p

from .hostile import GuestSide, HostileGuest, jframe

INTERVAL, TIMEOUT = 0.2, 0.6


@pytest.fixture(autouse=True)
def short_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "KEEPALIVE_INTERVAL", INTERVAL)
    monkeypatch.setattr(connection, "KEEPALIVE_TIMEOUT", TIMEOUT)


def _connect(guest: HostileGuest, script: Callable[[GuestSide], None]) -> AgentClient:
    guest.scripts.put(script)
    return AgentClient.connect(guest.socket, vm_id="silent", timeout=5)


def _started_then_silent(side: GuestSide) -> None:
    """Accept an exec, report its pid, then never send anything again."""
    side.hello()
    side.read_frame()
    side.send(jframe(p.REPLY, 1, {"pid": 42}))
    side.hold()


def test_untimed_exec_on_a_silent_agent_fails_within_the_bound(hostile: HostileGuest) -> None:
    with _connect(hostile, _started_then_silent) as client:
        started = time.monotonic()
        with pytest.raises(CommandExecutionUnavailableError) as caught:
            client.exec("sleep infinity")  # no timeout: only the keepalive ends it
        waited = time.monotonic() - started
        assert "stopped answering" in caught.value.message
        assert waited < 10 * (INTERVAL + TIMEOUT)  # bounded, not a timing figure
        assert not client.connected


def test_a_slow_command_on_a_live_agent_is_not_cut(hostile: HostileGuest) -> None:
    """The guest stays silent on the exec but answers every ping: the exec survives
    many keepalive periods and ends with its real exit status."""
    def script(side: GuestSide) -> None:
        side.hello()
        side.read_frame()
        side.send(jframe(p.REPLY, 1, {"pid": 42}))
        ends = time.monotonic() + 6 * (INTERVAL + TIMEOUT)
        side.conn.settimeout(0.05)
        pings = 0
        while time.monotonic() < ends:
            try:
                frame = side.read_frame()
            except TimeoutError:
                continue
            if frame.type == p.REQUEST and frame.json().get("op") == "ping":
                side.send(jframe(p.REPLY, frame.stream, {}))
                pings += 1
        assert pings >= 2, "the host never pinged the silent exec"
        side.send(jframe(p.EXIT, 1, {"code": 3}))
        side.conn.settimeout(None)
        side.hold()

    with _connect(hostile, script) as client:
        assert client.exec("long").exit_code == 3
        assert client.connected


def test_a_paused_machine_is_held_not_declared_dead(hostile: HostileGuest) -> None:
    frozen = threading.Event()
    frozen.set()
    with _connect(hostile, _started_then_silent) as client:
        client.keepalive_hold = frozen.is_set
        failure: list[BaseException] = []

        def run() -> None:
            try:
                client.exec("sleep infinity")
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(4 * (INTERVAL + TIMEOUT))
        assert worker.is_alive() and client.connected  # held while "paused"
        frozen.clear()  # "resumed", and still silent: now it is dead
        worker.join(10 * (INTERVAL + TIMEOUT))
        assert not worker.is_alive()
        assert isinstance(failure[0], CommandExecutionUnavailableError)


def test_idle_connections_send_nothing(hostile: HostileGuest) -> None:
    """No operation in flight, no ping: idle clones cost no guest CPU."""
    seen: list[p.Frame] = []

    def script(side: GuestSide) -> None:
        side.hello()
        side.conn.settimeout(5 * (INTERVAL + TIMEOUT))
        with contextlib.suppress(TimeoutError, EOFError):
            seen.append(side.read_frame())

    with _connect(hostile, script):
        time.sleep(3 * (INTERVAL + TIMEOUT))
    assert seen == []

"""Real-VM network acceptance: QEMU guests through the engine's NetworkManager.

Skipped until the engine wires :class:`smolbox.network.NetworkManager` in (it calls
``attach`` before spawning QEMU, appends ``qemu_args``, runs ``guest_commands``
through the agent after boot, and ``detach`` on delete). The packet policy itself
is proven without VMs in test_policy.py, on the very same nft tables.

Traffic goes only to servers these tests start on the host's loopback (reached
from a user-mode guest through slirp's 10.0.2.2) or inside the guest.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import smolbox.engine.engine as engine_module
from smolbox.errors import VMNotFoundError

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif("NetworkManager" not in inspect.getsource(engine_module),
                       reason="the engine does not use NetworkManager yet"),
]


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers "hello"."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello\n")

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    yield srv.getsockname()[1]
    stop.set()
    worker.join()
    srv.close()


def _connect_cmd(host: str, port: int) -> list[str]:
    return ["python3", "-c",
            "import socket,sys\n"
            f"c=socket.create_connection(({host!r},{port}),timeout=3)\n"
            "print(c.recv(64).decode().strip())"]


@pytest.fixture
def machine(engine: Any) -> Iterator[Any]:
    made: list[str] = []

    def create(config: dict[str, Any]) -> Any:
        record = engine.create(config)
        made.append(record.id)
        return record

    yield create
    for vm_id in made:
        with contextlib.suppress(VMNotFoundError):  # a test may have deleted it already
            engine.delete(vm_id, force=True)


def test_none_has_no_route(machine: Any, engine: Any) -> None:
    record = machine({})
    routes = engine.exec(record.id, ["ip", "route"])
    assert routes.exit_code == 0 and routes.stdout.strip() == ""
    links = engine.exec(record.id, ["ip", "-o", "link"])
    assert "eth0" not in links.stdout


def test_user_off_cannot_reach_host_server_and_open_can(
        machine: Any, engine: Any, host_server: int) -> None:
    closed = machine({"network": {"mode": "user", "egress": "off"}})
    opened = machine({"network": {"mode": "user", "egress": "open"}})
    assert engine.exec(opened.id, _connect_cmd("10.0.2.2", host_server)).stdout.strip() == "hello"
    assert engine.exec(closed.id, _connect_cmd("10.0.2.2", host_server)).exit_code != 0


def test_user_port_forward_reaches_guest_http_server(machine: Any, engine: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = machine({"network": {"mode": "user", "egress": "off"},
                      "ports": [{"host": port, "guest": 8000}]})
    engine.exec(record.id, ["sh", "-c", "mkdir -p /srv && echo smolbox-page > /srv/index.html"
                            " && cd /srv && setsid python3 -m http.server 8000 "
                            ">/dev/null 2>&1 < /dev/null &"])
    # python3 -m http.server needs several seconds to start under TCG: wait for it
    # to listen (up to 60 s) and fail here, clearly, if it never does.
    waited = engine.exec(record.id, ["python3", "-c",
                                     "import socket,sys,time\n"
                                     "for _ in range(600):\n"
                                     "    try: socket.create_connection(('127.0.0.1',8000),1)\n"
                                     "    except OSError: time.sleep(0.1)\n"
                                     "    else: sys.exit(0)\n"
                                     "sys.exit(1)"])
    assert waited.exit_code == 0, "the guest HTTP server never started listening"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as page:
        assert page.read().decode().strip() == "smolbox-page"


def test_tap_machine_gets_leased_address_and_cleans_up(machine: Any, engine: Any) -> None:
    record = machine({"network": {"mode": "tap", "egress": "off"}})
    assert record.ip is not None
    shown = engine.exec(record.id, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert record.ip in shown.stdout
    engine.delete(record.id, force=True)
    assert all(lease.vm_id != record.id for lease in engine.store.list_leases())

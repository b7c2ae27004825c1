"""Real-VM network acceptance: QEMU guests through the engine's NetworkManager.

The engine wires :class:`smolbox.network.NetworkManager` in (it calls ``attach``
before spawning QEMU, appends ``qemu_args``, runs ``guest_commands`` through the
agent after boot, and ``detach`` on delete). The packet policy itself is proven
without VMs in test_policy.py, on the very same nft tables.

Traffic goes only to servers these tests start on the host's loopback (reached
from a user-mode guest through slirp's 10.0.2.2) or inside the guest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from smolbox.config import MachineConfig
from smolbox.errors import VMNotFoundError
from tests.leakguard import session_tag

pytestmark = pytest.mark.vm


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


def wait_until_listening(engine: Any, vm_id: str, port: int) -> None:
    """python3 -m http.server needs several seconds to start under TCG: wait (up to
    60 s) until something listens on ``port`` in the guest, and fail clearly if not."""
    waited = engine.exec(vm_id, ["python3", "-c",
                                 "import socket,sys,time\n"
                                 "for _ in range(600):\n"
                                 f"    try: socket.create_connection(('127.0.0.1',{port}),1)\n"
                                 "    except OSError: time.sleep(0.1)\n"
                                 "    else: sys.exit(0)\n"
                                 "sys.exit(1)"])
    assert waited.exit_code == 0, f"nothing started listening on guest port {port}"


@pytest.fixture
def machine(engine: Any) -> Iterator[Any]:
    made: list[str] = []

    def create(config: dict[str, Any]) -> Any:
        record = engine.create(MachineConfig.model_validate(config))
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
    wait_until_listening(engine, record.id, 8000)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as page:
        assert page.read().decode().strip() == "smolbox-page"


def test_tap_machine_gets_leased_address_and_cleans_up(machine: Any, engine: Any) -> None:
    record = machine({"network": {"mode": "tap", "egress": "off"}})
    assert record.ip is not None
    shown = engine.exec(record.id, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert record.ip in shown.stdout
    engine.delete(record.id, force=True)
    assert all(lease.vm_id != record.id for lease in engine.store.list_leases())


@pytest.fixture
def outside_hosts() -> Iterator[tuple[str, str]]:
    """Two test servers on addresses this fixture creates, reached from the host
    through a veth into a namespace of their own: (allowed address, other address)."""
    import ipaddress
    import secrets
    import subprocess
    import sys

    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    taken = [ipaddress.ip_network(word, strict=False) for line in routes.splitlines()
             for word in line.split()[:1] if "/" in word]
    net = next(n for n in (ipaddress.ip_network(f"10.251.{i}.0/24") for i in range(1, 250))
               if not any(n.overlaps(t) for t in taken))
    host_ip, allowed, other = (str(net.network_address + i) for i in (1, 10, 11))
    tag = secrets.token_hex(3)
    ns, veth = f"sbxt-vmo-{session_tag()}{tag}", f"sbxto{tag}"  # the leak guard knows the tag
    servers: list[subprocess.Popen[str]] = []

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        for address in (allowed, other):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", host_ip)
        server = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,"
                  "socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(8)\n"
                  "print('ready',flush=True)\nwhile True:\n c,_=s.accept()\n"
                  " c.sendall(b'hello\\n'); c.close()")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", server],
                                stdout=subprocess.PIPE, text=True)
        servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield allowed, other
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_tap_allow_one_address_only(machine: Any, engine: Any,
                                    outside_hosts: tuple[str, str]) -> None:
    """Real VMs behind TAPs: the allowed /32 answers; another address on the same
    test network and another machine on the bridge do not. (169.254.169.254 is
    checked in test_policy.py on the same nft tables: from a real VM on this host
    a policy bug would send it to the host's real metadata service.)"""
    allowed, other = outside_hosts
    peer = machine({"network": {"mode": "tap", "egress": "open"}})
    engine.exec(peer.id, ["sh", "-c", "setsid python3 -m http.server 8000 "
                                      ">/dev/null 2>&1 < /dev/null &"])
    guarded = machine({"network": {"mode": "tap", "egress": "allow",
                                   "allow": [{"cidr": f"{allowed}/32", "ports": [8080],
                                              "protocol": "tcp"}]}})
    assert engine.exec(guarded.id, _connect_cmd(allowed, 8080)).stdout.strip() == "hello"
    assert engine.exec(guarded.id, _connect_cmd(other, 8080)).exit_code != 0
    # prove the peer's server is up (from the peer itself) before asserting that the
    # guarded machine cannot reach it
    wait_until_listening(engine, peer.id, 8000)
    assert peer.ip is not None
    blocked = engine.exec(guarded.id, ["python3", "-c",
                                       "import socket\n"
                                       f"socket.create_connection(({peer.ip!r},8000),3)"])
    assert blocked.exit_code != 0, "a machine reached another machine on the bridge"


def test_machines_with_a_nic_cannot_be_snapshotted_yet(machine: Any, engine: Any) -> None:
    from smolbox.errors import NotSupportedError

    record = machine({"network": {"mode": "user", "egress": "off"}})
    with pytest.raises(NotSupportedError):
        engine.snapshot(record.id, "nic-snapshot")
    assert not engine.store.list_pending_snapshots()
    assert engine.exec(record.id, "echo fine").stdout == "fine\n"

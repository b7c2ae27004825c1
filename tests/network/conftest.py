"""Fixtures for network tests: a throw-away "host" namespace and test peers.

Why a namespace as the host: smolbox's host side (bridge, TAPs, nft tables,
forwarding) is built inside ``sbxt-h-*`` through ``NetSettings(netns=...)``, so
the real host's routes, sysctls and firewall are never touched. All traffic goes
to addresses these fixtures create: an "outside" namespace (``sbxt-o-*``) holding
10.250.0.10 (allowed), 10.250.0.11 (not allowed), 10.250.0.53 (resolver) and
169.254.169.254 (metadata stand-in); and "guest" namespaces joined to the bridge
by a veth that replaces the machine's TAP under the same name, so the very nft
tables smolbox installed for the machine filter the guest's packets.

Tests may use ``ip netns exec`` to build their own hosts; product code does not.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smolbox.network import NetSettings, NetworkAttachment, NetworkManager
from smolbox.network.names import tap_alias, tap_name
from smolbox.paths import Paths
from smolbox.store import MachineRecord, Store
from tests.leakguard import session_tag

OUTSIDE_NET = "10.250.0.0/24"
HOST_UPLINK = "10.250.0.1"
ALLOWED = "10.250.0.10"
OTHER = "10.250.0.11"
RESOLVER = "10.250.0.53"
METADATA = "169.254.169.254"
GUEST_NET = "10.213.7.0/24"
SERVER_PORT = 8080

ROOT_FIXTURES = {"testnet", "manager"}
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that build namespaces need root: skip them (only them) without it.

    Why a hook: ``pytestmark`` in a conftest is not applied to the tests it covers.
    """
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if item.path.is_relative_to(HERE) and ROOT_FIXTURES & set(
                getattr(item, "fixturenames", ())):
            item.add_marker(skip)

_SERVER = r"""
import socket, sys, threading
kind, port, bind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(512)
        s.sendto(b"pong:" + data, peer)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind, port))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from " + c.getsockname()[0].encode() + b"\n")
    c.close()
"""

_CLIENT = r"""
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"ping", (host, port))
        print(s.recv(512).decode())
    else:
        with socket.create_connection((host, port), timeout=2) as c:
            c.settimeout(2)
            print(c.recv(512).decode().strip())
except OSError as err:
    print(f"failed: {err}")
    sys.exit(1)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def reach(ns: str, host: str, port: int = SERVER_PORT, kind: str = "tcp") -> bool:
    """Does a TCP connect (or UDP ping) from namespace ``ns`` get an answer?"""
    return in_ns(ns, sys.executable, "-c", _CLIENT, kind, host, str(port),
                 check=False).returncode == 0


@dataclass
class NetLab:
    """The namespaces of one test and the servers running in them."""

    tag: str
    host: str
    outside: str
    guests: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, ns: str, port: int = SERVER_PORT, kind: str = "tcp",
              bind: str = "0.0.0.0") -> None:
        """A server answering "hello"/"pong"; UDP ones bind one address so replies
        leave from the address the client asked (else NAT cannot match them)."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER,
                                 kind, str(port), bind], stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def plug_guest(self, vm_id: str, bridge: str, att: NetworkAttachment) -> str:
        """Swap the machine's TAP for a veth whose peer is a guest namespace.

        The veth keeps the TAP's name, alias and bridge, so smolbox's tables (which
        match on that name) filter the guest exactly as they would a VM; the guest
        is then configured with the attachment's own ``ip`` commands.
        """
        tap = tap_name(vm_id)
        guest = f"sbxt-g{len(self.guests)}-{self.tag}"
        sh("ip", "netns", "add", guest)
        self.guests.append(guest)
        in_ns(self.host, "ip", "link", "del", tap)
        in_ns(self.host, "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0",
              "netns", guest)
        in_ns(self.host, "ip", "link", "set", tap, "alias", tap_alias(bridge, vm_id),
              "master", bridge, "up")
        assert att.mac is not None
        in_ns(guest, "ip", "link", "set", "eth0", "address", att.mac)
        in_ns(guest, "ip", "link", "set", "lo", "up")
        for command in att.guest_commands:
            if command[0] == "ip":  # resolv.conf would be the real host's file here
                in_ns(guest, *command)
        return guest


@pytest.fixture
def testnet() -> Iterator[NetLab]:
    tag = session_tag() + secrets.token_hex(2)  # the leak guard finds leftovers by it
    net = NetLab(tag=tag, host=f"sbxt-h-{tag}", outside=f"sbxt-o-{tag}")
    try:
        for ns in (net.host, net.outside):
            sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(net.host, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
              "netns", net.outside)
        in_ns(net.host, "ip", "addr", "add", f"{HOST_UPLINK}/24", "dev", "up0")
        in_ns(net.host, "ip", "link", "set", "up0", "up")
        for address in (ALLOWED, OTHER, RESOLVER):
            in_ns(net.outside, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        in_ns(net.outside, "ip", "addr", "add", f"{METADATA}/32", "dev", "eth0")
        in_ns(net.outside, "ip", "link", "set", "eth0", "up")
        in_ns(net.host, "ip", "route", "add", f"{METADATA}/32", "via", ALLOWED)
        yield net
    finally:
        for proc in net.servers:
            proc.kill()
            proc.wait()
        for ns in [*net.guests, net.host, net.outside]:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(home=tmp_path, images=tmp_path / "images", cache=tmp_path / "cache",
                 run=tmp_path / "run")


def add_machine(store: Store, vm_id: str) -> str:
    store.insert_machine(MachineRecord(id=vm_id, name=f"n-{vm_id}", config={},
                                       image_ref="default"))
    return vm_id


@pytest.fixture
def manager(testnet: NetLab, store: Store, paths: Paths) -> Iterator[NetworkManager]:
    import ipaddress

    settings = NetSettings(bridge="sbxtbr0", cidr=ipaddress.IPv4Network(GUEST_NET),
                           netns=testnet.host, dns_servers=(RESOLVER,))
    mgr = NetworkManager(store, paths, settings)
    yield mgr
    mgr.reconcile(set())  # whatever a failing test left behind

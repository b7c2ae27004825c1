"""Packet-level egress policy: namespaces play the machines, smolbox's tables filter them.

Each guest namespace is plugged into the bridge in place of its machine's TAP
(same name, alias and bridge), so the packets cross exactly the tables
``NetworkManager.attach`` installed. Every negative check is paired with a
positive one proving the destination does answer when policy allows it, so a
test cannot pass merely because the test network is broken.
"""

from __future__ import annotations

from smolbox.config import MachineConfig
from smolbox.network import NetworkManager
from smolbox.store import Store

from .conftest import (
    ALLOWED,
    HOST_UPLINK,
    METADATA,
    OTHER,
    RESOLVER,
    SERVER_PORT,
    NetLab,
    add_machine,
    in_ns,
    reach,
)


def _machine(manager: NetworkManager, store: Store, lab: NetLab, vm_id: str,
             **network: object) -> tuple[str, str]:
    ports = network.pop("ports", [])
    config = MachineConfig.model_validate({"network": {"mode": "tap", **network},
                                           "ports": ports})
    att = manager.attach(add_machine(store, vm_id), config)
    assert att.ip is not None
    return lab.plug_guest(vm_id, manager.settings.bridge, att), att.ip


def test_allow_one_address_blocks_everything_else(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    testnet.serve(testnet.outside)
    guest, _ = _machine(manager, store, testnet, "sbx-00000a01", egress="allow",
                        allow=[{"cidr": f"{ALLOWED}/32"}])
    neighbour, neighbour_ip = _machine(manager, store, testnet, "sbx-00000a02", egress="open")
    testnet.serve(neighbour)

    # the servers answer on every address when policy does not interfere
    for address in (ALLOWED, OTHER, METADATA):
        assert reach(testnet.host, address), address
    assert reach(testnet.host, neighbour_ip)

    assert reach(guest, ALLOWED)
    assert not reach(guest, OTHER)
    assert not reach(guest, METADATA)
    assert not reach(guest, neighbour_ip)
    assert not reach(guest, HOST_UPLINK)  # the host itself is not on the list
    # egress 'open' still never reaches the metadata address or another machine
    assert reach(neighbour, OTHER)
    assert not reach(neighbour, METADATA)
    guest_ip = store.get_lease("sbx-00000a01")
    assert guest_ip is not None and not reach(neighbour, guest_ip.ip)


def test_egress_off_reaches_nothing(manager: NetworkManager, store: Store,
                                    testnet: NetLab) -> None:
    testnet.serve(testnet.outside)
    guest, _ = _machine(manager, store, testnet, "sbx-00000b01", egress="off")
    assert reach(testnet.host, ALLOWED)
    assert not reach(guest, ALLOWED)
    assert not reach(guest, OTHER)


def test_allow_rule_ports_and_protocols(manager: NetworkManager, store: Store,
                                       testnet: NetLab) -> None:
    testnet.serve(testnet.outside, SERVER_PORT)
    testnet.serve(testnet.outside, 9090)
    testnet.serve(testnet.outside, 9091, kind="udp", bind=OTHER)
    testnet.serve(testnet.outside, 9091, kind="udp", bind=ALLOWED)
    guest, _ = _machine(manager, store, testnet, "sbx-00000c01", egress="allow", allow=[
        {"cidr": "10.250.0.0/24", "ports": [SERVER_PORT], "protocol": "tcp"},
        {"cidr": f"{OTHER}/32", "ports": [9091], "protocol": "udp"},
    ])
    assert reach(guest, ALLOWED, SERVER_PORT) and reach(guest, OTHER, SERVER_PORT)
    assert reach(testnet.host, ALLOWED, 9090)
    assert not reach(guest, ALLOWED, 9090)
    assert reach(guest, OTHER, 9091, kind="udp")
    assert reach(testnet.host, ALLOWED, 9091, kind="udp")
    assert not reach(guest, ALLOWED, 9091, kind="udp")


def test_dns_only_when_asked_for(manager: NetworkManager, store: Store,
                                 testnet: NetLab) -> None:
    testnet.serve(testnet.outside, 53, kind="udp", bind=RESOLVER)
    testnet.serve(testnet.outside, 53, kind="udp", bind=OTHER)
    assert reach(testnet.host, RESOLVER, 53, kind="udp")
    assert reach(testnet.host, OTHER, 53, kind="udp")
    with_dns, _ = _machine(manager, store, testnet, "sbx-00000d01", egress="off", dns=True)
    without, _ = _machine(manager, store, testnet, "sbx-00000d02", egress="off")
    assert reach(with_dns, RESOLVER, 53, kind="udp")
    assert not reach(with_dns, OTHER, 53, kind="udp")  # only the configured resolver
    assert not reach(without, RESOLVER, 53, kind="udp")


def test_spoofed_source_address_is_dropped(manager: NetworkManager, store: Store,
                                           testnet: NetLab) -> None:
    testnet.serve(testnet.outside)
    guest, ip = _machine(manager, store, testnet, "sbx-00000e01", egress="open")
    assert reach(guest, ALLOWED)
    in_ns(guest, "ip", "addr", "flush", "dev", "eth0")
    in_ns(guest, "ip", "addr", "add", "10.213.7.99/24", "dev", "eth0")
    in_ns(guest, "ip", "route", "replace", "default", "via", "10.213.7.1")
    assert not reach(guest, ALLOWED)
    assert ip != "10.213.7.99"


def test_port_forward_reaches_guest_even_with_egress_off(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    guest, _ = _machine(manager, store, testnet, "sbx-00000f01", egress="off", ports=[
        {"host": 18080, "guest": 8000, "host_address": "0.0.0.0"},
    ])
    testnet.serve(guest, 8000)
    assert reach(testnet.outside, HOST_UPLINK, 18080)  # from the network, via prerouting
    assert reach(testnet.host, "127.0.0.1", 18080)      # from the host itself, via output
    assert not reach(guest, ALLOWED)

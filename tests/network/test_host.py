"""Host-level tests with real objects: TAPs, bridge, nft tables and leases.

Everything is built inside a throw-away namespace standing in for the host (see
conftest.py), with the real kernel, the real ``nft`` and the real store.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from smolbox.config import MachineConfig
from smolbox.errors import FirewallError, NetworkSetupError, PortInUseError
from smolbox.network import NetSettings, NetworkManager
from smolbox.network.names import tap_name
from smolbox.paths import Paths
from smolbox.store import Store

from .conftest import GUEST_NET, NetLab, add_machine, in_ns, sh

TAP_CONFIG = MachineConfig.model_validate({
    "network": {"mode": "tap", "egress": "allow", "allow": [{"cidr": "10.250.0.10/32"}]},
})


def links(ns: str) -> set[str]:
    out = json.loads(in_ns(ns, "ip", "-j", "link", "show").stdout)
    return {link["ifname"] for link in out}


def tables(ns: str) -> set[str]:
    out = json.loads(in_ns(ns, "nft", "-j", "list", "tables").stdout)
    return {f"{i['table']['family']} {i['table']['name']}" for i in out["nftables"]
            if "table" in i}


def test_attach_creates_and_detach_removes_tap_tables_and_lease(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    vm = add_machine(store, "sbx-000000a1")
    att = manager.attach(vm, TAP_CONFIG)
    tap = tap_name(vm)
    assert tap == "sbx000000a1"
    assert tap in links(testnet.host) and "sbxtbr0" in links(testnet.host)
    assert tables(testnet.host) == {f"bridge smolbox_sbxtbr0_{vm}", f"inet smolbox_sbxtbr0_{vm}",
                                    "inet smolbox_sbxtbr0"}
    lease = store.get_lease(vm)
    assert lease is not None and att.ip == lease.ip == "10.213.7.2" and att.mac == lease.mac
    assert store.get_machine(vm).ip == att.ip
    assert f"ifname={tap}" in att.qemu_args[1] and f"mac={lease.mac}" in att.qemu_args[3]
    master = json.loads(in_ns(testnet.host, "ip", "-j", "link", "show", tap).stdout)[0]
    assert master["master"] == "sbxtbr0"

    manager.detach(vm)
    assert tap not in links(testnet.host) and "sbxtbr0" not in links(testnet.host)
    assert tables(testnet.host) == set()
    assert store.get_lease(vm) is None and store.get_machine(vm).ip is None
    manager.detach(vm)  # idempotent


def test_twenty_cycles_leave_nothing_behind(manager: NetworkManager, store: Store,
                                            testnet: NetLab) -> None:
    before_links = links(testnet.host)
    for i in range(20):
        vm = add_machine(store, f"sbx-{i:08x}")
        att = manager.attach(vm, TAP_CONFIG)
        assert att.ip == "10.213.7.2"  # the previous lease really was given back
        assert tap_name(vm) in links(testnet.host)
        manager.detach(vm)
    assert links(testnet.host) == before_links
    assert tables(testnet.host) == set()
    assert store.list_leases() == []


def test_two_machines_get_distinct_leases_and_bridge_stays_until_last(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    a, b = add_machine(store, "sbx-0000000a"), add_machine(store, "sbx-0000000b")
    ip_a, ip_b = manager.attach(a, TAP_CONFIG).ip, manager.attach(b, TAP_CONFIG).ip
    assert ip_a != ip_b
    manager.detach(a)
    assert "sbxtbr0" in links(testnet.host) and "inet smolbox_sbxtbr0" in tables(testnet.host)
    manager.detach(b)
    assert "sbxtbr0" not in links(testnet.host) and tables(testnet.host) == set()


def test_reconcile_removes_orphans_and_keeps_live_machines(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    live, dead = add_machine(store, "sbx-000000c1"), add_machine(store, "sbx-000000c2")
    manager.attach(live, TAP_CONFIG)
    manager.attach(dead, TAP_CONFIG)
    # an unrelated interface with the sbx prefix but no smolbox alias is not ours
    in_ns(testnet.host, "ip", "link", "add", "sbxforeign", "type", "veth", "peer", "name",
          "foreignp")

    removed = manager.reconcile({live})
    assert sorted(removed) == sorted([
        f"tap {tap_name(dead)} ({dead})",
        f"nft table bridge smolbox_sbxtbr0_{dead}",
        f"nft table inet smolbox_sbxtbr0_{dead}",
        f"lease 10.213.7.3 ({dead})",
    ])
    assert tap_name(live) in links(testnet.host) and "sbxforeign" in links(testnet.host)
    assert tap_name(dead) not in links(testnet.host)
    assert tables(testnet.host) == {f"bridge smolbox_sbxtbr0_{live}",
                                    f"inet smolbox_sbxtbr0_{live}", "inet smolbox_sbxtbr0"}
    assert [lease.vm_id for lease in store.list_leases()] == [live]

    assert manager.reconcile({live}) == []
    removed = manager.reconcile(set())
    assert "bridge sbxtbr0" in removed
    assert tables(testnet.host) == set() and store.list_leases() == []


def test_tap_name_taken_by_foreign_interface_rolls_back(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    """A real failure at the last step: the kernel already has an interface of that name."""
    vm = add_machine(store, "sbx-000000d1")
    in_ns(testnet.host, "ip", "link", "add", tap_name(vm), "type", "veth", "peer", "name",
          "foreignp")
    with pytest.raises(NetworkSetupError) as caught:
        manager.attach(vm, TAP_CONFIG)
    assert caught.value.details["step"] == "create tap"
    assert caught.value.code == "NETWORK_SETUP_FAILED" and caught.value.help
    assert tables(testnet.host) == set()
    assert "sbxtbr0" not in links(testnet.host)
    assert tap_name(vm) in links(testnet.host)  # the foreign interface is left alone
    assert store.get_lease(vm) is None


def _fake_nft(tmp_path: Path, fail_on: str) -> str:
    """FAKE nft (failure injection): the real nft, except it rejects rulesets with a marker.

    No real input makes nft reject smolbox's own, validated per-machine ruleset after
    the shared table went in, so this wrapper injects exactly that.
    """
    script = tmp_path / "fake-nft"
    script.write_text(
        "#!/bin/sh\n"
        "if [ \"$1\" = -f ]; then\n"
        "  input=$(cat)\n"
        f"  case \"$input\" in *'{fail_on}'*) echo 'Error: injected failure' >&2; exit 1;; esac\n"
        "  printf '%s\\n' \"$input\" | exec nft \"$@\"\n"
        "fi\n"
        "exec nft \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_nft_rejecting_the_machine_policy_rolls_back(
        store: Store, paths: Paths, testnet: NetLab, tmp_path: Path) -> None:
    import ipaddress

    settings = NetSettings(bridge="sbxtbr0", cidr=ipaddress.IPv4Network(GUEST_NET),
                           netns=testnet.host,
                           nft_binary=_fake_nft(tmp_path, "chain from_guest"))
    mgr = NetworkManager(store, paths, settings)
    vm = add_machine(store, "sbx-000000e1")
    with pytest.raises(FirewallError) as caught:
        mgr.attach(vm, TAP_CONFIG)
    err = caught.value
    assert err.details["step"] == "install egress policy" and "injected" in err.message
    assert "rollback_errors" not in err.details
    assert tables(testnet.host) == set()
    assert not {tap_name(vm), "sbxtbr0"} & links(testnet.host)
    assert store.get_lease(vm) is None


def test_missing_nft_binary_is_a_firewall_error_and_rolls_back(
        store: Store, paths: Paths, testnet: NetLab) -> None:
    import ipaddress

    settings = NetSettings(bridge="sbxtbr0", cidr=ipaddress.IPv4Network(GUEST_NET),
                           netns=testnet.host, nft_binary="/nonexistent/nft")
    mgr = NetworkManager(store, paths, settings)
    vm = add_machine(store, "sbx-000000e2")
    with pytest.raises(FirewallError) as caught:
        mgr.attach(vm, TAP_CONFIG)
    assert caught.value.details["step"] == "install nat table"
    assert "sbxtbr0" not in links(testnet.host) and store.get_lease(vm) is None


def test_tap_port_forward_on_taken_port_is_port_in_use(
        manager: NetworkManager, store: Store, testnet: NetLab) -> None:
    testnet.serve(testnet.host, 18081)
    vm = add_machine(store, "sbx-000000f1")
    config = MachineConfig.model_validate({
        "network": {"mode": "tap"}, "ports": [{"host": 18081, "guest": 80,
                                               "host_address": "0.0.0.0"}]})
    with pytest.raises(PortInUseError) as caught:
        manager.attach(vm, config)
    assert caught.value.retryable and caught.value.details["port"] == 18081
    assert "sbxtbr0" not in links(testnet.host) and store.get_lease(vm) is None


def test_pool_exhaustion_is_typed_and_leaves_nothing(
        store: Store, paths: Paths, testnet: NetLab) -> None:
    import ipaddress

    from smolbox.errors import IPPoolExhaustedError

    settings = NetSettings(bridge="sbxtbr0", cidr=ipaddress.IPv4Network("10.213.9.0/29"),
                           netns=testnet.host)
    mgr = NetworkManager(store, paths, settings)
    vms = [add_machine(store, f"sbx-0000010{i}") for i in range(6)]
    for vm in vms[:5]:  # /29: 6 hosts, one is the gateway
        mgr.attach(vm, TAP_CONFIG)
    with pytest.raises(IPPoolExhaustedError):
        mgr.attach(vms[5], TAP_CONFIG)
    assert tap_name(vms[5]) not in links(testnet.host)
    for vm in vms[:5]:
        mgr.detach(vm)
    assert tables(testnet.host) == set() and store.list_leases() == []


def test_detach_of_user_machine_needs_no_host_access(store: Store, paths: Paths) -> None:
    """Nothing to undo for none/user machines: no nft or netlink write happens."""
    mgr = NetworkManager(store, paths, NetSettings(nft_binary="/nonexistent/nft"))
    vm = add_machine(store, "sbx-00000200")
    mgr.detach(vm)  # would raise FirewallError if it tried nft


def test_entering_missing_namespace_is_a_setup_error(store: Store, paths: Paths) -> None:
    mgr = NetworkManager(store, paths, NetSettings(netns="sbxt-does-not-exist"))
    vm = add_machine(store, "sbx-00000300")
    with pytest.raises(NetworkSetupError) as caught:
        mgr.attach(vm, TAP_CONFIG)
    assert caught.value.details["step"] == "enter netns"
    assert store.get_lease(vm) is None
    assert not os.path.exists("/run/netns/sbxt-does-not-exist")
    sh("true")

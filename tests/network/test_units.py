"""Unit tests: validation (before host changes), ruleset text, user-mode arguments.

No host objects: the validation tests give the manager settings pointing at a
namespace that does not exist and an nft that does not exist, so any attempt to
touch the host would surface as a different error than the one asserted.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smolbox.config import EgressRule, MachineConfig, NetworkPolicy, PortForward
from smolbox.errors import NetworkConfigError, NotSupportedError, PortInUseError
from smolbox.network import NetSettings, NetworkManager
from smolbox.network.names import (
    check_bridge_name,
    machine_table,
    parse_alias,
    parse_machine_table,
    tap_alias,
    tap_name,
)
from smolbox.network.ruleset import MachinePolicy, allow_rule, machine_ruleset, shared_ruleset
from smolbox.network.settings import check_cidr, host_resolvers
from smolbox.network.subnet import pick_subnet
from smolbox.network.usermode import user_args
from smolbox.paths import Paths
from smolbox.store import Store


@pytest.fixture
def offline(tmp_path: Path) -> NetworkManager:
    """A manager that cannot reach any host network: proof validation changes nothing."""
    store = Store.open(tmp_path / "db")
    settings = NetSettings(netns="sbxt-nowhere", nft_binary="/nonexistent/nft")
    return NetworkManager(store, Paths(tmp_path, tmp_path, tmp_path, tmp_path), settings)


def constructed(network: dict[str, Any], ports: list[Any] | None = None) -> MachineConfig:
    """A config that skipped pydantic validation (as old or hand-built rows can)."""
    policy = NetworkPolicy.model_construct(**{"mode": "tap", "egress": "off", "allow": [],
                                              "dns": False, **network})
    return MachineConfig.model_construct(network=policy, ports=ports or [])


@pytest.mark.parametrize(("network", "field"), [
    ({"egress": "allow", "allow": [EgressRule.model_construct(cidr="10.0.0.300/32", ports=[],
                                                               protocol="any")]},
     "network.allow.0.cidr"),
    ({"egress": "allow", "allow": [EgressRule.model_construct(cidr="10.0.0.0/8", ports=[0],
                                                               protocol="tcp")]},
     "network.allow.0.ports"),
    ({"egress": "sideways"}, "network.egress"),
    ({"mode": "bridge"}, "network.mode"),
    ({"egress": "off", "allow": [EgressRule.model_construct(cidr="10.0.0.0/8", ports=[],
                                                             protocol="any")]}, "network"),
])
def test_bad_policy_is_network_config_error_naming_field(
        offline: NetworkManager, network: dict[str, Any], field: str) -> None:
    with pytest.raises(NetworkConfigError) as caught:
        offline.attach("sbx-00000001", constructed(network))
    assert caught.value.details["field"] == field
    assert caught.value.code == "NETWORK_CONFIG_INVALID" and caught.value.help


def test_bad_port_forward_is_network_config_error(offline: NetworkManager) -> None:
    bad = PortForward.model_construct(host=70000, guest=80, protocol="tcp",
                                      host_address="127.0.0.1")
    with pytest.raises(NetworkConfigError) as caught:
        offline.attach("sbx-00000001", constructed({}, [bad]))
    assert caught.value.details["field"] == "ports.0.host"


@pytest.mark.parametrize("vm_id", ["Bad_Id", "-x", "a" * 64, "with space", ""])
def test_bad_machine_id_is_rejected_before_host_changes(offline: NetworkManager,
                                                        vm_id: str) -> None:
    with pytest.raises(NetworkConfigError) as caught:
        offline.attach(vm_id, MachineConfig.model_validate({"network": {"mode": "tap"}}))
    assert caught.value.details["field"] == "vm_id"


def test_none_mode_rejects_forwards_and_egress(offline: NetworkManager) -> None:
    with pytest.raises(NetworkConfigError) as caught:
        offline.validate(MachineConfig.model_validate({"ports": [{"host": 8080, "guest": 80}]}))
    assert caught.value.details["field"] == "ports"
    with pytest.raises(NetworkConfigError) as caught:
        offline.validate(MachineConfig.model_validate({"network": {"egress": "open"}}))
    assert caught.value.details["field"] == "network.egress"
    assert offline.attach("sbx-00000001", MachineConfig()).qemu_args == ()


def test_user_mode_allow_list_is_not_supported(offline: NetworkManager) -> None:
    config = MachineConfig.model_validate({"network": {
        "mode": "user", "egress": "allow", "allow": [{"cidr": "10.0.0.0/8"}]}})
    with pytest.raises(NotSupportedError) as caught:
        offline.attach("sbx-00000001", config)
    assert "tap" in caught.value.message and "tap" in caught.value.help
    with pytest.raises(NotSupportedError):
        offline.validate(MachineConfig.model_validate({"network": {"mode": "user",
                                                                   "dns": True}}))


def test_ipv6_host_address_is_not_supported(offline: NetworkManager) -> None:
    config = MachineConfig.model_validate({"network": {"mode": "user", "egress": "open"},
                                           "ports": [{"host": 8080, "guest": 80,
                                                      "host_address": "::1"}]})
    with pytest.raises(NotSupportedError):
        offline.validate(config)


def test_tap_dns_without_resolvers_is_config_error(tmp_path: Path) -> None:
    mgr = NetworkManager(Store.open(tmp_path / "db"), Paths(tmp_path, tmp_path, tmp_path,
                                                            tmp_path),
                         NetSettings(dns_servers=()))
    with pytest.raises(NetworkConfigError) as caught:
        mgr.validate(MachineConfig.model_validate({"network": {"mode": "tap", "dns": True}}))
    assert caught.value.details["field"] == "network.dns"


@pytest.mark.parametrize(("env", "field"), [
    ({"SMOLBOX_NET_CIDR": "10.1.2.3/24"}, "SMOLBOX_NET_CIDR"),     # host bits set
    ({"SMOLBOX_NET_CIDR": "8.8.8.0/24"}, "SMOLBOX_NET_CIDR"),      # not private
    ({"SMOLBOX_NET_CIDR": "10.9.9.0/30"}, "SMOLBOX_NET_CIDR"),     # too small
    ({"SMOLBOX_NET_CIDR": "banana"}, "SMOLBOX_NET_CIDR"),
    ({"SMOLBOX_NET_BRIDGE": "br-with-dash"}, "SMOLBOX_NET_BRIDGE"),
    ({"SMOLBOX_NET_BRIDGE": "a" * 16}, "SMOLBOX_NET_BRIDGE"),
    ({"SMOLBOX_NET_BRIDGE": "sbx0123abcd"}, "SMOLBOX_NET_BRIDGE"),  # a TAP name
    ({"SMOLBOX_NET_NETNS": "../etc"}, "netns"),
    ({"SMOLBOX_NET_DNS": "fd00::53"}, "SMOLBOX_NET_DNS"),
])
def test_bad_settings_are_config_errors(env: dict[str, str], field: str) -> None:
    with pytest.raises(NetworkConfigError) as caught:
        NetSettings.from_env(env)
    assert caught.value.details["field"] == field


def test_settings_from_env() -> None:
    s = NetSettings.from_env({"SMOLBOX_NET_CIDR": "10.77.0.0/24", "SMOLBOX_NET_BRIDGE": "mybr",
                              "SMOLBOX_NET_DNS": "10.77.1.1, 10.77.1.2"})
    assert s.cidr == ipaddress.IPv4Network("10.77.0.0/24") and s.bridge == "mybr"
    assert s.dns_servers == ("10.77.1.1", "10.77.1.2") and s.netns is None
    assert check_cidr("172.16.0.0/16").prefixlen == 16


def test_host_resolvers_skip_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 10.1.1.1\nnameserver fe80::1%eth0\n"
                    "search example\n")
    assert host_resolvers(conf) == ("10.1.1.1",)
    assert host_resolvers(tmp_path / "missing") == ()


def test_pick_subnet_avoids_host_networks() -> None:
    used = [ipaddress.IPv4Network("10.213.0.0/16"), ipaddress.IPv4Network("0.0.0.0/0")]
    assert pick_subnet(used) == ipaddress.IPv4Network("10.214.0.0/24")
    assert pick_subnet([]) == ipaddress.IPv4Network("10.213.0.0/24")


def test_names_round_trip() -> None:
    assert tap_name("sbx-1234abcd") == "sbx1234abcd"
    other = tap_name("my-machine")
    assert other.startswith("sbx") and len(other) == 11 and other != tap_name("my-machine2")
    assert parse_alias(tap_alias("sbxbr0", "sbx-1234abcd")) == ("sbxbr0", "sbx-1234abcd")
    assert parse_alias("something else") is None and parse_alias(None) is None
    table = machine_table("sbxbr0", "sbx-1234abcd")
    assert parse_machine_table(table, "sbxbr0") == "sbx-1234abcd"
    assert parse_machine_table(table, "otherbr") is None
    assert parse_machine_table("smolbox_sbxbr0", "sbxbr0") is None
    assert check_bridge_name("sbxbr0") == "sbxbr0"


# ------------------------------------------------------------------------ rulesets

def _policy(**kw: Any) -> MachinePolicy:
    base: dict[str, Any] = dict(
        vm_id="sbx-1234abcd", bridge="sbxbr0", tap="sbx1234abcd",
        subnet=ipaddress.IPv4Network("10.213.0.0/24"),
        gateway=ipaddress.IPv4Address("10.213.0.1"), bridge_mac="02:73:62:d5:00:01",
        guest_ip=ipaddress.IPv4Address("10.213.0.2"), guest_mac="52:54:00:d5:00:02",
        egress="off")
    return MachinePolicy(**{**base, **kw})


def _chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  chain {name} {{")
    end = lines.index("  }", start)
    return [line.strip() for line in lines[start + 1:end]]


def test_ruleset_replaces_tables_atomically_and_denies_by_default() -> None:
    text = machine_ruleset(_policy())
    assert text.splitlines()[:4] == [
        "add table bridge smolbox_sbxbr0_sbx-1234abcd",
        "delete table bridge smolbox_sbxbr0_sbx-1234abcd",
        "add table inet smolbox_sbxbr0_sbx-1234abcd",
        "delete table inet smolbox_sbxbr0_sbx-1234abcd",
    ]
    egress = _chain(text, "egress")
    assert egress[0] == "ct state established,related accept"
    assert egress[1] == "jump always_blocked"
    assert egress[-1].startswith("reject") and "accept" not in " ".join(egress[2:])
    assert _chain(text, "allowed") == []
    blocked = " ".join(_chain(text, "always_blocked"))
    for cidr in ("169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10",
                 "ip daddr 10.213.0.0/24 ip daddr != 10.213.0.1"):
        assert cidr in blocked
    guard = _chain(text, "from_guest")
    assert guard[0] == "ether saddr != 52:54:00:d5:00:02 drop" and guard[-1] == "drop"
    assert _chain(text, "isolate")[1:] == ['iifname "sbx1234abcd" drop',
                                       'oifname "sbx1234abcd" drop']
    assert "dnat_in" not in text and "dnat ip to" not in text


def test_ruleset_open_allow_dns_and_forwards() -> None:
    rules = (EgressRule(cidr="203.0.113.7/32"),
             EgressRule(cidr="2001:db8::/32", ports=[443, 80], protocol="tcp"),
             EgressRule(cidr="198.51.100.0/24", ports=[53], protocol="any"),
             EgressRule(cidr="192.0.2.0/24", protocol="udp"))
    text = machine_ruleset(_policy(egress="allow", allow=rules, dns_servers=("10.1.1.1",),
                                   forwards=(PortForward(host=8080, guest=80),
                                             PortForward(host=5353, guest=53, protocol="udp",
                                                         host_address="0.0.0.0"))))
    assert _chain(text, "allowed") == [
        "ip daddr 203.0.113.7/32 accept",
        "ip6 daddr 2001:db8::/32 tcp dport { 80, 443 } accept",
        "ip daddr 198.51.100.0/24 meta l4proto { tcp, udp } th dport 53 accept",
        "ip daddr 192.0.2.0/24 meta l4proto udp accept",
    ]
    egress = _chain(text, "egress")
    assert egress[2:] == ["ip daddr 10.1.1.1 udp dport 53 accept",
                          "ip daddr 10.1.1.1 tcp dport 53 accept",
                          "jump allowed", "reject with icmpx admin-prohibited"]
    assert _chain(text, "dnat_in")[1:] == [
        "ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 10.213.0.2:80",
        "fib daddr type local udp dport 5353 dnat ip to 10.213.0.2:53"]
    assert "accept" in _chain(machine_ruleset(_policy(egress="open")), "egress")
    assert "jump allowed" not in _chain(machine_ruleset(_policy(egress="open")), "to_host")
    assert allow_rule(EgressRule(cidr="10.0.0.0/8", protocol="tcp")) == (
        "ip daddr 10.0.0.0/8 meta l4proto tcp accept")


@pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True)
                    .stdout.strip() != "0", reason="nft --check needs root")
def test_generated_rulesets_pass_nft_check() -> None:
    """``nft --check`` parses and evaluates the text in the kernel without applying it."""
    rules = (EgressRule(cidr="203.0.113.7/32"),
             EgressRule(cidr="2001:db8::/32", ports=[443], protocol="tcp"))
    for text in (machine_ruleset(_policy(egress="allow", allow=rules, dns_servers=("10.1.1.1",),
                                         forwards=(PortForward(host=8080, guest=80),))),
                 shared_ruleset("sbxbr0", ipaddress.IPv4Network("10.213.0.0/24"))):
        # a fresh table name so the check cannot clash with anything installed
        proc = subprocess.run(["nft", "--check", "-f", "-"], input=text, text=True,
                              capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------- user mode

def test_user_mode_args() -> None:
    forwards = (PortForward(host=18080, guest=80), PortForward(host=5353, guest=53,
                                                                protocol="udp"))
    off = user_args(NetworkPolicy(mode="user", egress="off"), forwards)
    assert off == (
        "-netdev", "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,restrict=on,"
        "hostfwd=tcp:127.0.0.1:18080-10.0.2.15:80,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53",
        "-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56")
    opened = user_args(NetworkPolicy(mode="user", egress="open"), ())
    assert "restrict=off" in opened[1] and "hostfwd" not in opened[1]


def test_user_attach_gives_guest_commands(offline: NetworkManager) -> None:
    att = offline.attach("sbx-00000001", MachineConfig.model_validate(
        {"network": {"mode": "user", "egress": "open", "dns": True}}))
    assert att.ip == "10.0.2.15" and att.mac == "52:54:00:12:34:56"
    assert att.guest_commands[0] == ("ip", "addr", "replace", "10.0.2.15/24", "dev", "eth0")
    assert ("ip", "route", "replace", "default", "via", "10.0.2.2", "dev",
            "eth0") in att.guest_commands
    assert att.guest_commands[-1][-1] == "10.0.2.3"


def test_user_attach_with_taken_port_is_port_in_use(offline: NetworkManager) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = MachineConfig.model_validate({"network": {"mode": "user", "egress": "open"},
                                               "ports": [{"host": port, "guest": 80}]})
        with pytest.raises(PortInUseError) as caught:
            offline.attach("sbx-00000001", config)
    assert caught.value.retryable and caught.value.details["port"] == port


def test_port_forward_on_foreign_address_is_config_error(offline: NetworkManager) -> None:
    config = MachineConfig.model_validate({"network": {"mode": "user", "egress": "open"},
                                           "ports": [{"host": 18080, "guest": 80,
                                                      "host_address": "192.0.2.254"}]})
    with pytest.raises(NetworkConfigError) as caught:
        offline.attach("sbx-00000001", config)
    assert caught.value.details["field"] == "ports.0.host_address"

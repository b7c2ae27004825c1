"""nftables rulesets for TAP networking, as text (pure: no host access).

Why text fed to ``nft -f -``: the whole per-machine policy (L2 guard, egress
filter, port forwards) is one nft *transaction* — the kernel applies all of it or
none, so there is never a moment with a TAP but a half-built policy, and a
replaced policy never opens a window. Generating text also lets tests read
exactly what will be installed.

Per machine, two tables named ``smolbox_<bridge>_<vm id>``:

``table bridge``  the L2 guard on the machine's bridge port: frames must carry the
    leased MAC and IPv4 source (no spoofing another machine's address), ARP only
    for the gateway, IPv4 only to the bridge's own MAC (so it is routed through
    the inet policy below), everything else dropped (IPv6 included: guests have
    IPv4 leases only); and no frame is bridged to or from another port, so other
    machines on the bridge are unreachable at L2.
``table inet``    the L3 policy, deny by default: replies to established flows;
    link-local/metadata (169.254.0.0/16, fe80::/10, fd00:ec2::254) and other
    machines' addresses always rejected; DNS to the configured resolvers only when
    asked for; then ``open`` (anything routed, but never new connections to the
    host itself), ``allow`` (the listed CIDRs/ports/protocols) or ``off``
    (nothing). Inbound, only replies and DNAT-ed port forwards reach the guest.
    Port forwards are DNAT rules in the same table, so they go with it.

Shared per bridge, ``table inet smolbox_<bridge>``: masquerade of the guest
subnet, plus loopback sources going to the bridge (port forwards bound to
127.0.0.1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from smolbox.config import EgressRule, PortForward
from smolbox.network.names import machine_table, shared_table

__all__ = [
    "ALWAYS_BLOCKED_V4", "ALWAYS_BLOCKED_V6", "MachinePolicy", "machine_ruleset",
    "remove_machine_ruleset", "remove_shared_ruleset", "shared_ruleset",
]

ALWAYS_BLOCKED_V4 = ("169.254.0.0/16",)
ALWAYS_BLOCKED_V6 = ("fe80::/10", "fd00:ec2::254/128")
REJECT = "reject with icmpx admin-prohibited"
MACHINE_FAMILIES = ("bridge", "inet")


@dataclass(frozen=True)
class MachinePolicy:
    """Everything the per-machine tables depend on."""

    vm_id: str
    bridge: str
    tap: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    bridge_mac: str
    guest_ip: ipaddress.IPv4Address
    guest_mac: str
    egress: Literal["open", "off", "allow"]
    allow: tuple[EgressRule, ...] = ()
    dns_servers: tuple[str, ...] = ()
    forwards: tuple[PortForward, ...] = field(default_factory=tuple)


def _set(items: Iterable[object]) -> str:
    values = [str(i) for i in items]
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _replace(family: str, table: str) -> list[str]:
    """Declare-then-delete: the delete never fails, and the new table starts empty."""
    return [f"add table {family} {table}", f"delete table {family} {table}"]


def allow_rule(rule: EgressRule) -> str:
    """One allow-list entry as an nft rule (v4 or v6 by the CIDR)."""
    net = ipaddress.ip_network(rule.cidr, strict=False)
    match = f"{'ip' if net.version == 4 else 'ip6'} daddr {net}"
    if rule.protocol == "any":
        if rule.ports:
            match += f" meta l4proto {{ tcp, udp }} th dport {_set(sorted(set(rule.ports)))}"
    elif rule.ports:
        match += f" {rule.protocol} dport {_set(sorted(set(rule.ports)))}"
    else:
        match += f" meta l4proto {rule.protocol}"
    return f"{match} accept"


def _dns_rules(servers: Sequence[str]) -> list[str]:
    if not servers:
        return []
    target = _set(servers)
    return [f"ip daddr {target} udp dport 53 accept", f"ip daddr {target} tcp dport 53 accept"]


def _dnat_rule(p: MachinePolicy, fwd: PortForward) -> str:
    host = ipaddress.ip_address(fwd.host_address)
    where = "fib daddr type local" if host.is_unspecified else f"ip daddr {host}"
    return f"{where} {fwd.protocol} dport {fwd.host} dnat ip to {p.guest_ip}:{fwd.guest}"


def _bridge_table(p: MachinePolicy, name: str) -> list[str]:
    tap = f'"{p.tap}"'
    return [
        f"table bridge {name} {{",
        "  chain guard {",
        "    type filter hook prerouting priority filter; policy accept;",
        f"    iifname {tap} jump from_guest",
        "  }",
        "  chain from_guest {",
        f"    ether saddr != {p.guest_mac} drop",
        f"    ether type arp arp htype 1 arp ptype ip arp saddr ether {p.guest_mac}"
        f" arp saddr ip {p.guest_ip} arp daddr ip {p.gateway} accept",
        f"    ether type ip ether daddr {p.bridge_mac} ip saddr {p.guest_ip} accept",
        "    drop",
        "  }",
        "  chain isolate {",
        "    type filter hook forward priority filter; policy accept;",
        f"    iifname {tap} drop",
        f"    oifname {tap} drop",
        "  }",
        "}",
    ]


def _inet_table(p: MachinePolicy, name: str) -> list[str]:
    bridge, ip = f'"{p.bridge}"', p.guest_ip
    dns = _dns_rules(p.dns_servers)
    policy = {"open": ["accept"], "allow": ["jump allowed"], "off": []}[p.egress]
    lines = [
        f"table inet {name} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    iifname {bridge} ip saddr {ip} jump egress",
        f"    oifname {bridge} ip daddr {ip} jump inbound",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    iifname {bridge} ip saddr {ip} jump to_host",
        "  }",
        "  chain always_blocked {",
        f"    ip daddr {_set(ALWAYS_BLOCKED_V4)} {REJECT}",
        f"    ip6 daddr {_set(ALWAYS_BLOCKED_V6)} {REJECT}",
        f"    ip daddr {p.subnet} ip daddr != {p.gateway} {REJECT}",
        "  }",
        "  chain allowed {",
        *(f"    {allow_rule(rule)}" for rule in p.allow),
        "  }",
        "  chain egress {",
        "    ct state established,related accept",
        "    jump always_blocked",
        *(f"    {rule}" for rule in dns),
        *(f"    {rule}" for rule in policy),
        f"    {REJECT}",
        "  }",
        "  chain to_host {",
        "    ct state established,related accept",
        "    jump always_blocked",
        *(f"    {rule}" for rule in dns),
        *(["    jump allowed"] if p.egress == "allow" else []),
        f"    {REJECT}",
        "  }",
        "  chain inbound {",
        "    ct state established,related accept",
        "    ct status dnat accept",
        "    drop",
        "  }",
    ]
    if p.forwards:
        rules = [f"    {_dnat_rule(p, fwd)}" for fwd in p.forwards]
        lines += [
            "  chain dnat_in {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *rules,
            "  }",
            "  chain dnat_local {",
            "    type nat hook output priority -100; policy accept;",
            *rules,
            "  }",
        ]
    return [*lines, "}"]


def machine_ruleset(p: MachinePolicy) -> str:
    """One transaction installing (or atomically replacing) a machine's two tables."""
    name = machine_table(p.bridge, p.vm_id)
    lines: list[str] = []
    for family in MACHINE_FAMILIES:
        lines += _replace(family, name)
    lines += _bridge_table(p, name) + _inet_table(p, name)
    return "\n".join(lines) + "\n"


def remove_machine_ruleset(bridge: str, vm_id: str) -> str:
    """One transaction removing a machine's tables; succeeds if they are already gone."""
    name = machine_table(bridge, vm_id)
    return "\n".join(line for family in MACHINE_FAMILIES for line in _replace(family, name)) + "\n"


def shared_ruleset(bridge: str, subnet: ipaddress.IPv4Network) -> str:
    """The bridge's NAT table (replaced as a whole, so re-running it is harmless)."""
    name = shared_table(bridge)
    return "\n".join([
        *_replace("inet", name),
        f"table inet {name} {{",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ip saddr {subnet} ip daddr != {subnet} masquerade",
        f'    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade',
        "  }",
        "}",
    ]) + "\n"


def remove_shared_ruleset(bridge: str) -> str:
    return "\n".join(_replace("inet", shared_table(bridge))) + "\n"

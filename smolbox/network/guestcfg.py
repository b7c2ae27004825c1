"""Commands that configure the guest's eth0 through the agent, right after boot.

Why through the agent rather than the kernel ``ip=`` argument: clones start from a
snapshot of an already-booted template, whose kernel command line cannot change;
the agent reaches every machine the same way. Plain iproute2 argv lists, no
shell, except one fixed ``sh -c`` writing resolv.conf with the servers passed as
arguments (never interpolated).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["GUEST_IFACE", "guest_commands"]

GUEST_IFACE = "eth0"
_RESOLV = 'printf "nameserver %s\\n" "$@" > /etc/resolv.conf'


def guest_commands(address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address,
                   dns_servers: Sequence[str] = ()) -> tuple[tuple[str, ...], ...]:
    commands: list[tuple[str, ...]] = [
        ("ip", "addr", "replace", str(address), "dev", GUEST_IFACE),
        ("ip", "link", "set", "dev", GUEST_IFACE, "up"),
        ("ip", "route", "replace", "default", "via", str(gateway), "dev", GUEST_IFACE),
    ]
    if dns_servers:
        commands.append(("sh", "-c", _RESOLV, "sh", *(str(ipaddress.IPv4Address(s))
                                                       for s in dns_servers)))
    return tuple(commands)

"""Choosing guest addresses: the lowest free host address of a network.

Why lowest-free rather than random or round-robin: allocation is then
deterministic (tests and users can predict the address) and the pool never
fragments; reuse of a released address is harmless because its MAC and nft rules
are removed with the machine before the address can be leased again.

The network address, the first host (the host side: gateway, bridge) and the
broadcast address are never handed out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["lowest_free", "mac_for", "usable_hosts"]


def usable_hosts(network: ipaddress.IPv4Network) -> Iterable[ipaddress.IPv4Address]:
    """Guest addresses of ``network`` in ascending order (gateway excluded)."""
    hosts = network.hosts()  # without network/broadcast for prefixes up to /30
    if network.prefixlen >= 31:
        return ()  # /31 and /32 have no room for a gateway plus a guest
    next(hosts, None)  # the first host is the gateway
    return hosts


def lowest_free(network: ipaddress.IPv4Network,
                taken: Iterable[str]) -> ipaddress.IPv4Address | None:
    """The lowest usable address of ``network`` not in ``taken``, or None when full."""
    used = {ipaddress.IPv4Address(ip) for ip in taken}
    for candidate in usable_hosts(network):
        if candidate not in used:
            return candidate
    return None


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """A stable, locally administered MAC derived from the address.

    QEMU's own prefix 52:54:00 (locally administered, unicast) plus the low 24 bits
    of the IP: unique within any network up to a /8, and the same address always
    gets the same MAC, so a guest's ARP caches stay valid across restarts.
    """
    low = int(ip) & 0xFFFFFF
    return f"52:54:00:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"

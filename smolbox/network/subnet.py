"""Choosing the guests' subnet without colliding with the host's own networks.

Why at run time: a hard-coded range (10.0.0.0/24, 192.168.0.0/24…) is exactly
what some host, VPN or container runtime already uses; guests would then shadow
real destinations. The choice is deterministic (first free candidate) so every
smolbox process on the host arrives at the same answer, and once the bridge
exists its address *is* the answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from smolbox.errors import NetworkSetupError

__all__ = ["candidates", "gateway_of", "pick_subnet"]


def candidates() -> Iterator[ipaddress.IPv4Network]:
    """/24s in rarely used corners of RFC 1918 space, in a fixed order."""
    for second in (213, 214, 215):
        for third in range(0, 256):
            yield ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
    for third in range(0, 256):
        yield ipaddress.IPv4Network(f"172.29.{third}.0/24")


def pick_subnet(in_use: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first candidate overlapping nothing in ``in_use``."""
    used = [net for net in in_use if net.prefixlen > 0]
    for net in candidates():
        if not any(net.overlaps(other) for other in used):
            return net
    raise NetworkSetupError(
        "No free private /24 for the guest network", step="choose subnet",
        help="Set SMOLBOX_NET_CIDR to a private subnet that is free on this host.",
    )


def gateway_of(net: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The host side of the guest network: its first host address."""
    return ipaddress.IPv4Interface(f"{next(net.hosts())}/{net.prefixlen}")

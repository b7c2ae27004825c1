"""Host-wide network settings, read from the environment once and checked.

Why checked here: an invalid ``SMOLBOX_NET_CIDR`` or bridge name is a user's input
like any other and must become a NetworkConfigError before anything on the host
changes.

- ``SMOLBOX_NET_CIDR``    the guests' IPv4 subnet (default: picked at run time, see
  :mod:`smolbox.network.subnet`); the first host address is the bridge/gateway.
- ``SMOLBOX_NET_BRIDGE``  the bridge name (default ``sbxbr0``).
- ``SMOLBOX_NET_NETNS``   a named network namespace holding the host side
  (default: the host's own namespace).
- ``SMOLBOX_NET_DNS``     comma-separated resolvers guests may use when ``dns`` is on
  (default: the non-loopback ``nameserver`` lines of ``/etc/resolv.conf``).
- ``SMOLBOX_NFT``         the nft binary (default ``nft`` on PATH).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smolbox.errors import NetworkConfigError
from smolbox.network.names import check_bridge_name
from smolbox.network.netns import check_netns_name

__all__ = ["DEFAULT_BRIDGE", "NetSettings", "check_cidr", "host_resolvers"]

DEFAULT_BRIDGE = "sbxbr0"
MAX_PREFIX = 29  # room for the gateway and a handful of guests


def check_cidr(text: str, field: str = "SMOLBOX_NET_CIDR") -> ipaddress.IPv4Network:
    """A private IPv4 subnet big enough for a gateway and guests."""
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as err:
        raise NetworkConfigError(f"{field}={text!r} is not an IPv4 network: {err}",
                                 field=field, value=text) from None
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise NetworkConfigError(f"{field}={text!r} must be a private range (RFC 1918)",
                                 field=field, value=text)
    if net.prefixlen > MAX_PREFIX:
        raise NetworkConfigError(f"{field}={text!r} is too small: use /{MAX_PREFIX} or larger",
                                 field=field, value=text)
    return net


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """Nameservers a guest can reach through the host (loopback ones cannot be)."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return ()
    found: list[str] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            if addr.version == 4 and not addr.is_loopback:
                found.append(str(addr))
    return tuple(found)


@dataclass(frozen=True)
class NetSettings:
    """Where and how the host side of TAP networking is built."""

    bridge: str = DEFAULT_BRIDGE
    cidr: ipaddress.IPv4Network | None = None
    netns: str | None = None
    dns_servers: tuple[str, ...] = field(default_factory=tuple)
    nft_binary: str = "nft"

    def __post_init__(self) -> None:
        check_bridge_name(self.bridge, "SMOLBOX_NET_BRIDGE")
        if self.netns is not None:
            check_netns_name(self.netns)
        if self.cidr is not None:
            check_cidr(str(self.cidr))
        for server in self.dns_servers:
            try:
                if ipaddress.ip_address(server).version != 4:
                    raise ValueError("guests have IPv4 only")
            except ValueError as err:
                raise NetworkConfigError(f"DNS server {server!r} is not usable: {err}",
                                         field="SMOLBOX_NET_DNS", value=server) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NetSettings:
        env = os.environ if env is None else env
        cidr_text = env.get("SMOLBOX_NET_CIDR", "").strip()
        dns_text = env.get("SMOLBOX_NET_DNS")
        dns = (tuple(s.strip() for s in dns_text.split(",") if s.strip())
               if dns_text is not None else host_resolvers())
        return cls(
            bridge=env.get("SMOLBOX_NET_BRIDGE", "").strip() or DEFAULT_BRIDGE,
            cidr=check_cidr(cidr_text) if cidr_text else None,
            netns=env.get("SMOLBOX_NET_NETNS", "").strip() or None,
            dns_servers=dns,
            nft_binary=env.get("SMOLBOX_NFT", "").strip() or "nft",
        )

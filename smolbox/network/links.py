"""Links, addresses and sysctls of the host side, through netlink (pyroute2).

Why pyroute2 and not ``ip``: netlink answers are structured (no parsing of text
that changes between iproute2 versions) and errors carry an errno, which becomes
a :class:`NetworkSetupError` naming the step. Every function takes an open
``IPRoute`` so the caller decides which network namespace it talks to (see
:mod:`smolbox.network.netns`) and can batch several steps on one socket.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from smolbox.errors import NetworkSetupError
from smolbox.network.names import TAP_PREFIX, parse_alias

__all__ = [
    "SmolboxPort", "bridge_address", "bridge_ports", "create_tap", "delete_link",
    "ensure_bridge", "find_link", "host_networks", "link_mac", "netlink", "smolbox_ports",
    "write_sysctl",
]


@contextmanager
def netlink() -> Iterator[IPRoute]:
    """A netlink socket in the calling thread's network namespace."""
    try:
        ipr = IPRoute()
    except OSError as err:
        raise NetworkSetupError(f"Cannot open a netlink socket: {err}",
                                step="open netlink") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _fail(step: str, err: Exception, **details: Any) -> NetworkSetupError:
    code = getattr(err, "code", None) or getattr(err, "errno", None)
    text = errno.errorcode.get(code, str(code)) if isinstance(code, int) else ""
    return NetworkSetupError(f"{step} failed: {err}", step=step,
                             details={**details, "errno": code, "errno_name": text})


def find_link(ipr: IPRoute, name: str) -> Any | None:
    """The link message of ``name``, or None when no such interface exists."""
    try:
        found = ipr.link_lookup(ifname=name)
    except NetlinkError as err:
        raise _fail("look up link", err, ifname=name) from None
    if not found:
        return None
    return ipr.get_links(found[0])[0]


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_mac(ipr: IPRoute, name: str) -> str:
    link = find_link(ipr, name)
    if link is None:
        raise NetworkSetupError(f"Interface {name} does not exist", step="read link",
                                details={"ifname": name})
    return str(link.get_attr("IFLA_ADDRESS"))


def host_networks(ipr: IPRoute) -> list[ipaddress.IPv4Network]:
    """IPv4 networks already in use here: every address and every non-default route."""
    nets: list[ipaddress.IPv4Network] = []
    try:
        for addr in ipr.get_addr(family=2):
            nets.append(ipaddress.IPv4Network(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False))
        for route in ipr.get_routes(family=2, table=0):
            dst = route.get_attr("RTA_DST")
            if dst is not None and route["dst_len"] > 0:
                nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    except NetlinkError as err:
        raise _fail("read host routes", err) from None
    return nets


def bridge_address(ipr: IPRoute, bridge: str) -> ipaddress.IPv4Interface | None:
    """The bridge's IPv4 address (the guests' gateway), None if it has none."""
    link = find_link(ipr, bridge)
    if link is None:
        return None
    for addr in ipr.get_addr(family=2, index=link["index"]):
        return ipaddress.IPv4Interface(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
    return None


def ensure_bridge(ipr: IPRoute, bridge: str, gateway: ipaddress.IPv4Interface,
                  mac: str) -> bool:
    """Create the bridge with its gateway address and a fixed MAC; True if created now.

    A fixed MAC matters: a bridge otherwise takes the lowest MAC of its ports, which
    would change under the guests' feet and break the L2 guard that pins the
    gateway's MAC.
    """
    existing = find_link(ipr, bridge)
    if existing is not None:
        if _kind(existing) != "bridge":
            raise NetworkSetupError(
                f"Interface {bridge} exists but is not a bridge", step="create bridge",
                details={"ifname": bridge, "kind": _kind(existing)},
                help="Choose another SMOLBOX_NET_BRIDGE, or remove that interface.",
            )
        return False
    try:
        ipr.link("add", ifname=bridge, kind="bridge", address=mac)
    except NetlinkError as err:
        raise _fail("create bridge", err, ifname=bridge) from None
    try:
        index = ipr.link_lookup(ifname=bridge)[0]
        ipr.addr("add", index=index, address=str(gateway.ip),
                 prefixlen=gateway.network.prefixlen)
        ipr.link("set", index=index, state="up")
    except NetlinkError as err:
        delete_link(ipr, bridge)
        raise _fail("configure bridge", err, ifname=bridge, address=str(gateway)) from None
    return True


def create_tap(ipr: IPRoute, name: str, bridge: str, alias: str) -> None:
    """A persistent TAP for QEMU to open, enslaved to ``bridge`` and labelled ours.

    An existing interface of that name is never reused: opening a persistent TAP
    by name would silently attach to someone else's device. A stale TAP left by
    this very machine (same alias) is replaced.
    """
    existing = find_link(ipr, name)
    if existing is not None:
        if existing.get_attr("IFLA_IFALIAS") != alias:
            raise NetworkSetupError(
                f"Interface {name} already exists and is not this machine's TAP",
                step="create tap", details={"ifname": name,
                                            "alias": existing.get_attr("IFLA_IFALIAS")},
                help="Another program or smolbox installation uses this name; remove it or "
                     "delete the machine holding it.",
            )
        delete_link(ipr, name)
    try:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    except NetlinkError as err:
        raise _fail("create tap", err, ifname=name) from None
    except OSError as err:  # pyroute2 creates TAPs through /dev/net/tun ioctls
        raise _fail("create tap", err, ifname=name) from None
    try:
        index = ipr.link_lookup(ifname=name)[0]
        master = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=index, ifalias=alias, master=master, state="up")
    except (NetlinkError, IndexError) as err:
        delete_link(ipr, name)
        raise _fail("attach tap to bridge", err, ifname=name, bridge=bridge) from None


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Remove an interface; False when it was already gone (idempotent)."""
    link = find_link(ipr, name)
    if link is None:
        return False
    try:
        ipr.link("del", index=link["index"])
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return False
        raise _fail("delete link", err, ifname=name) from None
    return True


class SmolboxPort:
    """A smolbox-labelled interface found on the host (for reconcile)."""

    __slots__ = ("bridge", "name", "vm_id")

    def __init__(self, name: str, bridge: str, vm_id: str) -> None:
        self.name, self.bridge, self.vm_id = name, bridge, vm_id


def smolbox_ports(ipr: IPRoute) -> list[SmolboxPort]:
    """Every interface named ``sbx…`` carrying a smolbox alias."""
    ports: list[SmolboxPort] = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        owner = parse_alias(link.get_attr("IFLA_IFALIAS"))
        if name.startswith(TAP_PREFIX) and owner is not None:
            ports.append(SmolboxPort(name, owner[0], owner[1]))
    return ports


def bridge_ports(ipr: IPRoute, bridge: str) -> list[str]:
    """Names of the interfaces enslaved to ``bridge`` (empty if it does not exist)."""
    link = find_link(ipr, bridge)
    if link is None:
        return []
    return [p.get_attr("IFLA_IFNAME") for p in ipr.get_links()
            if p.get_attr("IFLA_MASTER") == link["index"]]


def write_sysctl(key: str, value: str) -> None:
    """Set a ``net.*`` sysctl of the calling thread's namespace (e.g. ip_forward)."""
    path = Path("/proc/sys") / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError as err:
        raise _fail(f"set {key}", err, sysctl=key, value=value) from None

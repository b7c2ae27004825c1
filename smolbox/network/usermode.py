"""QEMU user-mode (slirp) networking: the arguments for one machine.

Why slirp for ``user``: it needs no root and no host objects at all: the NAT lives
inside the QEMU process and dies with it, so there is nothing to clean up.
Its egress control is all-or-nothing: ``restrict=on`` confines the guest to the
port forwards, which is how ``egress='off'`` is implemented here. Addresses are
slirp's fixed defaults; every machine has its own private slirp network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from smolbox.config import NetworkPolicy, PortForward

__all__ = [
    "USER_DNS", "USER_GATEWAY", "USER_GUEST", "USER_MAC", "USER_NET", "hostfwd", "user_args",
]

USER_NET = ipaddress.IPv4Network("10.0.2.0/24")
USER_GATEWAY = ipaddress.IPv4Address("10.0.2.2")
USER_DNS = ipaddress.IPv4Address("10.0.2.3")
USER_GUEST = ipaddress.IPv4Interface("10.0.2.15/24")
USER_MAC = "52:54:00:12:34:56"
NETDEV_ID = "net0"


def hostfwd(fwd: PortForward) -> str:
    """``hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80`` for one port forward."""
    return (f"hostfwd={fwd.protocol}:{fwd.host_address}:{fwd.host}-"
            f"{USER_GUEST.ip}:{fwd.guest}")


def user_args(policy: NetworkPolicy, forwards: Sequence[PortForward]) -> tuple[str, ...]:
    netdev = ",".join([
        f"user,id={NETDEV_ID}",
        f"net={USER_NET}",
        f"host={USER_GATEWAY}",
        f"dns={USER_DNS}",
        f"restrict={'off' if policy.egress == 'open' else 'on'}",
        *(hostfwd(fwd) for fwd in forwards),
    ])
    return ("-netdev", netdev,
            "-device", f"virtio-net-device,netdev={NETDEV_ID},mac={USER_MAC}")

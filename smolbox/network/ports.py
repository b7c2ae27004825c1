"""Is a host port free for a port forward?

Why check instead of letting QEMU or nft find out: for user mode, QEMU would fail
*after* spawning with an opaque message; for TAP mode, a DNAT rule would silently
shadow whatever listens there. A failed bind now becomes PortInUseError
(retryable: the port may be free in a moment), before any host change.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from smolbox.config import PortForward
from smolbox.errors import NetworkConfigError, PortInUseError

__all__ = ["check_ports_free"]


def check_ports_free(forwards: Iterable[PortForward]) -> None:
    for index, fwd in enumerate(forwards):
        kind = socket.SOCK_STREAM if fwd.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((fwd.host_address, fwd.host))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortInUseError(
                        fwd.host, message=(f"Host port {fwd.host_address}:{fwd.host}/"
                                           f"{fwd.protocol} is already in use"),
                        details={"protocol": fwd.protocol, "host_address": fwd.host_address},
                    ) from None
                if err.errno == errno.EADDRNOTAVAIL:
                    raise NetworkConfigError(
                        f"Host address {fwd.host_address} is not an address of this host",
                        field=f"ports.{index}.host_address", value=fwd.host_address,
                    ) from None
                raise PortInUseError(
                    fwd.host, message=f"Cannot bind host port {fwd.host}: {err.strerror}",
                    details={"errno": err.errno},
                ) from None

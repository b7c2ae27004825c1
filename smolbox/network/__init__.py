"""Machine networking: none | user (QEMU slirp) | tap (bridge + nftables policy).

The engine uses :class:`NetworkManager` only; the submodules each do one job
(naming, validation, rulesets, nft, netlink, namespaces) and are importable for
tests and diagnostics.
"""

from smolbox.network.manager import NetworkAttachment, NetworkManager
from smolbox.network.settings import NetSettings

__all__ = ["NetSettings", "NetworkAttachment", "NetworkManager"]

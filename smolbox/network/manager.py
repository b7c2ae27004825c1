"""The network manager the engine calls: validate, attach, detach, reconcile.

Why one facade: the engine must not know about bridges, TAPs or nft; it asks for
a machine's network *before* QEMU spawns (getting QEMU arguments and the guest
commands to run after boot) and gives it back when the machine goes. Everything
the manager creates is named so :meth:`reconcile` can find it after a crash
(:mod:`smolbox.network.names`), and every attach either completes or undoes the
steps it took, in reverse order, before raising the typed error of the step that
failed.

Order of a TAP attach, chosen so that no moment exists with a TAP but no policy:
lease -> bridge (+ forwarding sysctls) -> shared NAT table -> per-machine tables
(one nft transaction) -> TAP. Detach runs it backwards and is idempotent.
Host changes are serialised across processes by a lock file per bridge.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from smolbox.config import MachineConfig, NetworkPolicy, PortForward
from smolbox.errors import NetworkConfigError, NetworkSetupError, SmolboxError
from smolbox.network import links, names, ruleset
from smolbox.network.guestcfg import guest_commands
from smolbox.network.netns import run_in
from smolbox.network.nft import Nft
from smolbox.network.ports import check_ports_free
from smolbox.network.settings import NetSettings
from smolbox.network.subnet import gateway_of, pick_subnet
from smolbox.network.usermode import USER_DNS, USER_GATEWAY, USER_GUEST, USER_MAC, user_args
from smolbox.network.validate import validate_config
from smolbox.paths import Paths
from smolbox.store import Store

__all__ = ["NetworkAttachment", "NetworkManager"]

log = logging.getLogger("smolbox.network")
CAP_NET_ADMIN = 12


@dataclass(frozen=True)
class NetworkAttachment:
    """What the engine needs from the network for one machine."""

    qemu_args: tuple[str, ...] = ()
    guest_commands: tuple[tuple[str, ...], ...] = ()
    ip: str | None = None
    mac: str | None = None


def bridge_mac_for(gateway: ipaddress.IPv4Address) -> str:
    """A locally administered MAC (02:73:62 = "sb") fixed by the gateway address."""
    low = int(gateway) & 0xFFFFFF
    return f"02:73:62:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"


def can_admin_network() -> bool:
    """Root or CAP_NET_ADMIN: needed for TAPs, bridges and nft."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


class _Rollback:
    """Undo steps run in reverse on failure; their own errors are logged, not raised."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, fn: Callable[[], Any]) -> None:
        self._steps.append((what, fn))

    def run(self, cause: BaseException) -> None:
        failures: list[str] = []
        for what, fn in reversed(self._steps):
            try:
                fn()
            except Exception as err:  # keep undoing the rest; report below
                log.error("network rollback step %r failed: %s", what, err)
                failures.append(f"{what}: {err}")
        self._steps.clear()
        if failures and isinstance(cause, SmolboxError):
            cause.details["rollback_errors"] = failures


class NetworkManager:
    """Host networking for machines (see the module docstring for the order of steps)."""

    def __init__(self, store: Store, paths: Paths, settings: NetSettings | None = None) -> None:
        self.store = store
        self.paths = paths
        self.settings = settings or NetSettings.from_env()
        self.nft = Nft(self.settings.nft_binary)

    # ---------------------------------------------------------------- public
    def validate(self, config: MachineConfig) -> None:
        """Raise NetworkConfigError / NotSupportedError for unusable settings; no host change."""
        policy, _ = validate_config(config)
        if policy.mode == "tap" and policy.dns and not self.settings.dns_servers:
            raise NetworkConfigError(
                "network.dns is on but this host has no resolver guests can reach",
                field="network.dns", value=True,
                help="Set SMOLBOX_NET_DNS to resolvers reachable from the guest network.",
            )

    def attach(self, vm_id: str, config: MachineConfig) -> NetworkAttachment:
        """Prepare the host side of a machine's network; call before QEMU spawns."""
        self.validate(config)
        policy, forwards = validate_config(config)
        if policy.mode == "none":
            return NetworkAttachment()
        if policy.mode == "user":
            check_ports_free(forwards)  # QEMU binds them in the caller's namespace
            return NetworkAttachment(
                qemu_args=user_args(policy, forwards),
                guest_commands=guest_commands(USER_GUEST, USER_GATEWAY,
                                              [str(USER_DNS)] if policy.dns else []),
                ip=str(USER_GUEST.ip), mac=USER_MAC,
            )
        names.check_vm_id(vm_id)
        run_in(self.settings.netns, lambda: check_ports_free(forwards))
        with self._locked():
            return run_in(self.settings.netns,
                          lambda: self._attach_tap(vm_id, policy, forwards))

    def detach(self, vm_id: str) -> None:
        """Remove a machine's TAP, tables and lease; a no-op when it has none."""
        names.check_vm_id(vm_id)
        if self.store.get_lease(vm_id) is None and not self._tap_exists(vm_id):
            return  # none/user machines and already-detached ones: nothing on the host
        with self._locked():
            run_in(self.settings.netns, lambda: self._detach_tap(vm_id))

    def reconcile(self, live_vm_ids: set[str]) -> list[str]:
        """Remove TAPs, nft tables and leases of machines not in ``live_vm_ids``."""
        removed: list[str] = []
        if can_admin_network():
            with self._locked():
                removed += run_in(self.settings.netns, lambda: self._reconcile_host(live_vm_ids))
        for lease in self.store.list_leases():
            if lease.vm_id not in live_vm_ids:
                self.store.release_lease(lease.vm_id)
                removed.append(f"lease {lease.ip} ({lease.vm_id})")
        return removed

    # ----------------------------------------------------------------- inside
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One host-network change at a time per bridge, across processes.

        The host's bridge is shared by every smolbox on the host, so its lock is a
        fixed file in /run/lock; a dedicated namespace belongs to one installation,
        so its lock lives in that installation's run directory (and goes with it).
        """
        base = Path("/run/lock")
        if self.settings.netns is not None or not os.access(base, os.W_OK):
            base = self.paths.run
            base.mkdir(parents=True, exist_ok=True)
        where = self.settings.netns or "host"
        path = base / f"smolbox-net-{where}-{self.settings.bridge}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tap_exists(self, vm_id: str) -> bool:
        def probe() -> bool:
            with links.netlink() as ipr:
                return links.find_link(ipr, names.tap_name(vm_id)) is not None
        return run_in(self.settings.netns, probe)

    def _subnet(self, ipr: IPRoute) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Interface]:
        """The guest subnet: the bridge's if it exists, else configured, else picked."""
        existing = links.bridge_address(ipr, self.settings.bridge)
        wanted = self.settings.cidr
        if existing is not None:
            if wanted is not None and existing.network != wanted:
                raise NetworkSetupError(
                    f"Bridge {self.settings.bridge} has {existing} but SMOLBOX_NET_CIDR is "
                    f"{wanted}", step="check bridge",
                    help="Delete the machines on the bridge first, or unset SMOLBOX_NET_CIDR.",
                )
            return existing.network, existing
        net = wanted if wanted is not None else pick_subnet(links.host_networks(ipr))
        return net, gateway_of(net)

    def _attach_tap(self, vm_id: str, policy: NetworkPolicy,
                    forwards: tuple[PortForward, ...]) -> NetworkAttachment:
        bridge, tap = self.settings.bridge, names.tap_name(vm_id)
        undo = _Rollback()
        with links.netlink() as ipr:
            try:
                subnet, gateway = self._subnet(ipr)
                lease = self.store.allocate_lease(vm_id, subnet)
                undo.add("release lease", lambda: self.store.release_lease(vm_id))
                if links.ensure_bridge(ipr, bridge, gateway, bridge_mac_for(gateway.ip)):
                    undo.add("remove bridge", lambda: self._remove_bridge_if_unused(ipr))
                links.write_sysctl("net.ipv4.ip_forward", "1")
                links.write_sysctl(f"net.ipv4.conf.{bridge}.route_localnet", "1")
                self.nft.apply(ruleset.shared_ruleset(bridge, subnet), "install nat table")
                machine = ruleset.MachinePolicy(
                    vm_id=vm_id, bridge=bridge, tap=tap, subnet=subnet, gateway=gateway.ip,
                    bridge_mac=links.link_mac(ipr, bridge),
                    guest_ip=ipaddress.IPv4Address(lease.ip), guest_mac=lease.mac,
                    egress=policy.egress, allow=tuple(policy.allow),
                    dns_servers=self.settings.dns_servers if policy.dns else (),
                    forwards=forwards,
                )
                undo.add("remove egress policy", lambda: self.nft.apply(
                    ruleset.remove_machine_ruleset(bridge, vm_id), "remove egress policy"))
                self.nft.apply(ruleset.machine_ruleset(machine), "install egress policy")
                links.create_tap(ipr, tap, bridge, names.tap_alias(bridge, vm_id))
            except BaseException as err:
                undo.run(err)
                raise
        address = ipaddress.IPv4Interface(f"{lease.ip}/{subnet.prefixlen}")
        return NetworkAttachment(
            qemu_args=("-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
                       "-device", f"virtio-net-device,netdev=net0,mac={lease.mac}"),
            guest_commands=guest_commands(address, gateway.ip, machine.dns_servers),
            ip=lease.ip, mac=lease.mac,
        )

    def _detach_tap(self, vm_id: str) -> None:
        bridge, tap = self.settings.bridge, names.tap_name(vm_id)
        with links.netlink() as ipr:
            link = links.find_link(ipr, tap)
            if link is not None and link.get_attr("IFLA_IFALIAS") == names.tap_alias(bridge,
                                                                                     vm_id):
                links.delete_link(ipr, tap)
            self.nft.apply(ruleset.remove_machine_ruleset(bridge, vm_id),
                           "remove egress policy")
            self.store.release_lease(vm_id)
            self._remove_bridge_if_unused(ipr)

    def _remove_bridge_if_unused(self, ipr: IPRoute) -> bool:
        """Drop the bridge and its NAT table once no port is left on it."""
        bridge = self.settings.bridge
        if links.find_link(ipr, bridge) is None or links.bridge_ports(ipr, bridge):
            return False
        links.delete_link(ipr, bridge)
        self.nft.apply(ruleset.remove_shared_ruleset(bridge), "remove nat table")
        return True

    def _reconcile_host(self, live: set[str]) -> list[str]:
        bridge = self.settings.bridge
        removed: list[str] = []
        with links.netlink() as ipr:
            for port in links.smolbox_ports(ipr):
                if (port.bridge == bridge and port.vm_id not in live
                        and links.delete_link(ipr, port.name)):
                    removed.append(f"tap {port.name} ({port.vm_id})")
            orphans: dict[str, list[str]] = {}
            for table in self.nft.tables():
                vm_id = names.parse_machine_table(table.name, bridge)
                if vm_id is not None and vm_id not in live:
                    orphans.setdefault(vm_id, []).append(f"{table.family} {table.name}")
            for vm_id, tables in orphans.items():
                self.nft.apply(ruleset.remove_machine_ruleset(bridge, vm_id),
                               "remove orphan egress policy")
                removed += [f"nft table {t}" for t in tables]
            if self._remove_bridge_if_unused(ipr):
                removed.append(f"bridge {bridge}")
        return removed

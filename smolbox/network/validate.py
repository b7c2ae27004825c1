"""Checking a machine's network settings before anything on the host changes.

Why again, after pydantic: a ``MachineConfig`` can be built without validation
(``model_construct``, old rows in the store) and some rules depend on the mode
(user-mode NAT cannot filter by destination), which the model alone does not
know. Every problem becomes a NetworkConfigError naming the field, or a
NotSupportedError when the setting is valid but this mode cannot honour it.
"""

from __future__ import annotations

import ipaddress

from smolbox.config import MachineConfig, NetworkPolicy, PortForward
from smolbox.errors import NetworkConfigError, NotSupportedError, ValidationError

__all__ = ["checked_forwards", "checked_policy", "validate_config"]

MODES = ("none", "user", "tap")


def _reraise(err: ValidationError, prefix: str) -> NetworkConfigError:
    inner = err.details.get("field")
    field = f"{prefix}.{inner}" if inner and inner != "config" else prefix  # "config": whole model
    return NetworkConfigError(f"Invalid network setting {field}: {err.message}",
                              field=field, value=err.details.get("value"))


def checked_policy(config: MachineConfig) -> NetworkPolicy:
    """The network policy, validated again from its plain values."""
    raw = config.network
    try:
        return NetworkPolicy.model_validate(
            raw.model_dump() if isinstance(raw, NetworkPolicy) else raw)
    except ValidationError as err:
        raise _reraise(err, "network") from None


def checked_forwards(config: MachineConfig) -> tuple[PortForward, ...]:
    forwards: list[PortForward] = []
    for index, fwd in enumerate(config.ports):
        try:
            forwards.append(PortForward.model_validate(
                fwd.model_dump() if isinstance(fwd, PortForward) else fwd))
        except ValidationError as err:
            raise _reraise(err, f"ports.{index}") from None
    seen: set[tuple[str, int, str]] = set()
    for index, fwd in enumerate(forwards):
        key = (fwd.host_address, fwd.host, fwd.protocol)
        if key in seen:
            raise NetworkConfigError(f"Host port {fwd.host}/{fwd.protocol} is forwarded twice",
                                     field=f"ports.{index}.host", value=fwd.host)
        seen.add(key)
        if ipaddress.ip_address(fwd.host_address).version != 4:
            raise NotSupportedError(
                f"Port forward {index} binds IPv6 address {fwd.host_address}; only IPv4 host "
                "addresses can be forwarded", operation="port forward",
                reason="guests have IPv4 addresses only",
            )
    return tuple(forwards)


def validate_config(config: MachineConfig) -> tuple[NetworkPolicy, tuple[PortForward, ...]]:
    """The checked policy and port forwards, or the first problem as a typed error."""
    policy = checked_policy(config)
    forwards = checked_forwards(config)
    if policy.mode not in MODES:  # unreachable through pydantic; kept for constructed configs
        raise NetworkConfigError(f"Unknown network mode {policy.mode!r}",
                                 field="network.mode", value=policy.mode)
    if policy.mode == "none":
        if forwards:
            raise NetworkConfigError(
                "Port forwards need a network: set network.mode to 'user' or 'tap'",
                field="ports", value=len(forwards))
        if policy.egress != "off" or policy.dns:
            field = "network.dns" if policy.egress == "off" else "network.egress"
            raise NetworkConfigError(
                "Network mode 'none' has no NIC: egress and dns cannot be enabled",
                field=field, value=policy.dns if policy.egress == "off" else policy.egress)
    elif policy.mode == "user":
        if policy.egress == "allow":
            raise NotSupportedError(
                "User-mode networking cannot filter by destination: use network mode 'tap' "
                "for an egress allow-list", operation="egress allow",
                reason="QEMU user-mode NAT has only on/off (restrict) for egress",
                help="Set network.mode='tap' (needs root or CAP_NET_ADMIN) to use `allow` rules.",
            )
        if policy.dns and policy.egress == "off":
            raise NotSupportedError(
                "User-mode networking cannot allow DNS while egress is off: use network mode "
                "'tap' for DNS-only egress", operation="dns without egress",
                reason="QEMU's restrict=on cuts off its DNS proxy too",
                help="Set network.mode='tap', or egress='open'.",
            )
    return policy, forwards

"""Choose the accelerator QEMU runs with: KVM when it really works, else TCG.

Why probe-based: ``/dev/kvm`` existing says nothing about whether a guest can run
(see :mod:`smolbox.host.kvm`). The choice is made once per process (the probe
spawns a child) and logged as a ``KVM_UNAVAILABLE`` warning on fallback, so a user
who expected hardware speed learns why machines are slower.

``SMOLBOX_ACCEL=kvm|tcg`` overrides the choice (e.g. to force TCG on a host whose
KVM passes the probe but misbehaves later).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Literal

from smolbox import errors
from smolbox.host.kvm import KVM_DEVICE, KVMProbeResult, probe_kvm
from smolbox.host.tsc import tsc_khz

__all__ = ["ACCEL_ENV", "Accelerator", "choose_accelerator", "reset_cache", "tsc_khz"]

log = logging.getLogger("smolbox")

ACCEL_ENV = "SMOLBOX_ACCEL"
KVM_ARGS = ("-accel", "kvm", "-cpu", "host")
TCG_ARGS = ("-accel", "tcg", "-cpu", "max")


@dataclass(frozen=True)
class Accelerator:
    """The decision: ``name`` and the QEMU arguments that implement it."""

    name: Literal["kvm", "tcg"]
    kvm_usable: bool
    reason: str
    qemu_args: list[str] = field(default_factory=list)


_cache: dict[str | None, Accelerator] = {}
_lock = threading.Lock()


def reset_cache() -> None:
    """Forget the cached decision (tests; a host whose KVM changed)."""
    with _lock:
        _cache.clear()


def choose_accelerator() -> Accelerator:
    """KVM if the probe passes (or SMOLBOX_ACCEL=kvm), TCG otherwise; cached per process."""
    override = os.environ.get(ACCEL_ENV) or None
    with _lock:
        if override not in _cache:
            _cache[override] = _decide(override)
        return _cache[override]


def _decide(override: str | None) -> Accelerator:
    if override not in (None, "kvm", "tcg"):
        raise errors.ValidationError(
            f"{ACCEL_ENV} must be 'kvm' or 'tcg', not {override!r}",
            field=ACCEL_ENV, value=override,
            help=f"Unset {ACCEL_ENV} to let smolbox probe, or set it to kvm or tcg.",
        )
    if override == "tcg":
        return Accelerator("tcg", False, f"{ACCEL_ENV}=tcg (KVM not probed)", list(TCG_ARGS))
    probe = probe_kvm()
    if override == "kvm":
        return _forced_kvm(probe)
    if probe.usable:
        return Accelerator("kvm", True, probe.reason, list(KVM_ARGS))
    warning = errors.KVMUnavailableError(probe.reason)
    log.warning("%s; using software emulation (TCG)", warning,
                extra={"code": warning.code, "reason": probe.reason})
    return Accelerator("tcg", False, probe.reason, list(TCG_ARGS))


def _forced_kvm(probe: KVMProbeResult) -> Accelerator:
    if not os.path.exists(KVM_DEVICE):
        raise errors.BackendNotAvailableError(
            f"{ACCEL_ENV}=kvm but {KVM_DEVICE} does not exist",
            details={"reason": probe.reason},
            help=f"Load the kvm module and grant access to {KVM_DEVICE}, or unset {ACCEL_ENV}.",
        )
    if not probe.usable:
        log.warning("%s=kvm overrides a failed KVM probe: %s", ACCEL_ENV, probe.reason,
                    extra={"code": errors.KVMUnavailableError.code, "reason": probe.reason})
    return Accelerator("kvm", probe.usable, f"{ACCEL_ENV}=kvm; probe: {probe.reason}",
                       list(KVM_ARGS))

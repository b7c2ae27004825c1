"""`smolbox doctor`: can this host run smolbox machines, and how well?

Why a report object rather than printing: the CLI renders it as a table or JSON,
the engine and the REST server's readiness check read ``ok``/``kvm_usable``, and
tests assert on it, all from one run of the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smolbox import errors
from smolbox.host import checks
from smolbox.host.checks import Check
from smolbox.host.kvm import probe_kvm
from smolbox.paths import Paths

__all__ = ["Check", "DoctorReport", "run_doctor"]


@dataclass(frozen=True)
class DoctorReport:
    """Every check's outcome plus the two answers callers need most."""

    checks: list[Check] = field(default_factory=list)
    kvm_usable: bool = False
    accelerator: str | None = None

    @property
    def ok(self) -> bool:
        """True when the engine can run machines (no check failed; warnings allowed)."""
        return all(check.status != "fail" for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "kvm_usable": self.kvm_usable, "accelerator": self.accelerator,
                "checks": [check.to_dict() for check in self.checks]}

    def error(self) -> errors.SmolboxError | None:
        """The error that explains why the engine cannot run (None when it can)."""
        failures = self.failures
        if not failures:
            return None
        names = ", ".join(check.name for check in failures)
        first = failures[0].error
        details = {"failed_checks": [check.to_dict() for check in failures]}
        if len(failures) == 1 and first is not None:
            first.details.setdefault("failed_checks", details["failed_checks"])
            return first
        return errors.HostError(
            f"This host cannot run smolbox machines: failed checks: {names}",
            details=details,
            help="; ".join(f"{check.name}: {check.fix}" for check in failures if check.fix)
            or "Run `smolbox doctor` and fix the failed checks.",
        )


def run_doctor(paths: Paths | None = None) -> DoctorReport:
    """Run every check against this host (takes well under a second)."""
    paths = paths or Paths.from_env()
    probe = probe_kvm()
    accel_check, accel = checks.check_accelerator()
    found = [
        checks.check_qemu(),
        checks.check_qemu_img(),
        checks.check_kvm_device(),
        checks.check_kvm_usable(probe),
        accel_check,
        checks.check_home_writable(paths.home),
        checks.check_disk_space(paths.home),
        checks.check_image_builder(),
        checks.check_tool("mkfs.ext4", "e2fsprogs", "builds guest root file systems"),
        checks.check_tool("nft", "nftables", "enforces machine egress policies"),
        checks.check_tool("ip", "iproute2", "sets up TAP networking"),
        checks.check_linux_source(),
        checks.check_virtiofsd(),
        checks.check_default_image(paths),
        *checks.check_jail(),
    ]
    return DoctorReport(checks=found, kvm_usable=probe.usable,
                        accelerator=accel.name if accel else None)

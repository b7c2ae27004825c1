"""The individual `smolbox doctor` checks: each asks the host one question.

Why each check is a small function returning a :class:`Check` instead of raising:
doctor must show *every* problem at once, with its fix, so a user repairs the host
in one round. Only the CLI turns a failing report into an error (and exit code).

Severity: ``fail`` means the engine cannot run machines at all; ``warn`` means it
runs but something is degraded (software emulation) or a later feature (image
builds, networking, host directory sharing) will not work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smolbox import errors
from smolbox.host.accel import Accelerator, choose_accelerator
from smolbox.host.jailhost import JailSettings, support
from smolbox.host.kvm import KVM_DEVICE, KVMProbeResult
from smolbox.paths import Paths

Status = Literal["ok", "warn", "fail"]

QEMU = "qemu-system-x86_64"
QEMU_MIN_VERSION = (7, 2)
GIB = 1024**3
DISK_WARN_BYTES = 5 * GIB
DISK_FAIL_BYTES = 1 * GIB
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
LINUX_SOURCE_DIR = Path("/usr/src")
_VERSION = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Check:
    """One line of the doctor table; ``error`` is what a failure raises from the CLI."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    error: errors.SmolboxError | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status,
                                "detail": self.detail, "fix": self.fix}
        if self.error is not None:
            data["code"] = self.error.code
        return data


def _missing_tool(name: str, tool: str, package: str, status: Status, why: str) -> Check:
    fix = f"apt-get install {package}   (or: bash scripts/install.sh)"
    err = errors.HostToolMissingError(tool, package)
    return Check(name, status, f"{tool} not found on PATH ({why})", fix,
                 err if status == "fail" else None)


def check_qemu() -> Check:
    path = shutil.which(QEMU)
    if path is None:
        return _missing_tool("qemu", QEMU, "qemu-system-x86", "fail", "runs every machine")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("qemu", "fail", f"{path} --version failed: {err}",
                     "Reinstall qemu-system-x86.",
                     errors.HostError(f"{QEMU} does not run: {err}", details={"path": path}))
    match = _VERSION.search(out)
    if match is None:
        return Check("qemu", "fail", f"cannot read the version of {path}: {out.strip()[:80]!r}",
                     "Reinstall qemu-system-x86.",
                     errors.HostError(f"Unrecognised {QEMU} version output",
                                      details={"path": path, "output": out[:300]}))
    version = tuple(int(part or 0) for part in match.groups())
    shown = ".".join(str(v) for v in version)
    if version[:2] < QEMU_MIN_VERSION:
        need = ".".join(map(str, QEMU_MIN_VERSION))
        return Check("qemu", "fail", f"{path} is version {shown}, smolbox needs >= {need}",
                     "Install QEMU from Debian 12 (bookworm) or newer.",
                     errors.HostError(f"{QEMU} {shown} is too old (need >= {need})",
                                      details={"path": path, "version": shown}))
    return Check("qemu", "ok", f"{path} version {shown}")


def check_qemu_img() -> Check:
    path = shutil.which("qemu-img")
    if path is None:
        return _missing_tool("qemu-img", "qemu-img", "qemu-utils", "fail",
                             "creates copy-on-write machine disks")
    return Check("qemu-img", "ok", path)


def check_kvm_device() -> Check:
    if os.path.exists(KVM_DEVICE):
        return Check("/dev/kvm", "ok", f"{KVM_DEVICE} exists")
    return Check("/dev/kvm", "warn", f"{KVM_DEVICE} does not exist: machines use TCG",
                 "Enable virtualisation (VT-x/AMD-V) and load kvm_intel or kvm_amd.")


def check_kvm_usable(probe: KVMProbeResult) -> Check:
    if probe.usable:
        return Check("kvm", "ok", f"KVM runs guests ({probe.elapsed_s * 1000:.1f} ms probe)")
    return Check("kvm", "warn", f"no, using software emulation (TCG): {probe.reason}",
                 "Machines still work, only slower. For hardware speed use a host where "
                 "KVM can run a 64-bit guest (not a nested paravirtual one).")


def check_accelerator() -> tuple[Check, Accelerator | None]:
    try:
        accel = choose_accelerator()
    except errors.SmolboxError as err:
        return Check("accelerator", "fail", err.message, err.help, err), None
    return Check("accelerator", "ok", f"{accel.name} ({' '.join(accel.qemu_args)})"), accel


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_disk_space(home: Path, *, warn_bytes: int = DISK_WARN_BYTES,
                     fail_bytes: int = DISK_FAIL_BYTES) -> Check:
    where = _existing_ancestor(home)
    try:
        free = shutil.disk_usage(where).free
    except OSError as err:
        return Check("disk space", "fail", f"cannot measure free space at {where}: {err}",
                     "Check SMOLBOX_HOME.",
                     errors.HostError(f"Cannot measure free disk space at {where}"))
    shown = f"{free / GIB:.1f} GiB free under {where}"
    fix = "Free disk space, or point SMOLBOX_HOME at a larger disk."
    if free < fail_bytes:
        return Check("disk space", "fail", shown + f" (need >= {fail_bytes / GIB:g} GiB)", fix,
                     errors.DiskSpaceError(f"Only {free / GIB:.2f} GiB free under {where}",
                                           details={"free_bytes": free, "path": str(where)}))
    if free < warn_bytes:
        return Check("disk space", "warn", shown + f" (< {warn_bytes / GIB:g} GiB)", fix)
    return Check("disk space", "ok", shown)


def check_home_writable(home: Path) -> Check:
    fix = "Point SMOLBOX_HOME at a directory this user can write."
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as err:
        return Check("smolbox home", "fail", f"{home} is not writable: {err.strerror}", fix,
                     errors.HostError(f"SMOLBOX_HOME {home} is not writable: {err.strerror}",
                                      details={"path": str(home)}, help=fix))
    return Check("smolbox home", "ok", f"{home} is writable")


def check_image_builder() -> Check:
    for tool in ("mmdebstrap", "debootstrap"):
        path = shutil.which(tool)
        if path:
            return Check("rootfs builder", "ok", path)
    return _missing_tool("rootfs builder", "mmdebstrap", "mmdebstrap", "warn",
                         "needed to build guest images")


def check_tool(tool: str, package: str, why: str) -> Check:
    path = shutil.which(tool)
    if path is None:
        return _missing_tool(tool, tool, package, "warn", why)
    return Check(tool, "ok", path)


def check_linux_source(src_dir: Path = LINUX_SOURCE_DIR) -> Check:
    tarballs = sorted(src_dir.glob("linux-source-*.tar.*"))
    if tarballs:
        return Check("linux-source", "ok", str(tarballs[-1]))
    return Check("linux-source", "warn",
                 f"no linux-source-*.tar.* under {src_dir} (needed to build the guest kernel)",
                 "apt-get install linux-source")


def check_virtiofsd(path: Path = VIRTIOFSD) -> Check:
    if os.access(path, os.X_OK):
        return Check("virtiofsd", "ok", str(path))
    return Check("virtiofsd", "warn", f"{path} missing (needed to share host directories)",
                 "apt-get install qemu-system-common")


def check_default_image(paths: Paths) -> Check:
    image = paths.images / "default"
    if image.exists():
        return Check("default image", "ok", str(image))
    return Check("default image", "warn", f"{image} does not exist yet",
                 "Build it with `smolbox image build` (create needs an installed image).")


def check_jail() -> list[Check]:
    """One line per containment layer, and a loud one when the user turned jails off."""
    try:
        settings = JailSettings.from_env()
    except errors.SmolboxError as err:
        return [Check("jail", "fail", err.message, err.help, err)]
    found: list[Check] = []
    if not settings.enabled:
        found.append(Check("jail", "warn", "SMOLBOX_JAIL=off: QEMU runs UNCONFINED as root "
                           "(no own uid, chroot, namespaces, seccomp or limits)",
                           "Unset SMOLBOX_JAIL to jail every QEMU."))
    for layer, state in support().items():
        ok = state == "yes" or state.startswith("v")
        status: Status = "ok" if ok else ("warn" if not settings.enabled else "fail")
        refusal = None if ok else errors.JailerError(
            f"This host cannot give the jail layer {layer}: {state}", step=layer)
        found.append(Check(f"jail: {layer}", status, state,
                           "" if ok else "Run as root on a host with namespaces, seccomp and "
                           "cgroups, or opt out with SMOLBOX_JAIL=off.", refusal))
    return found

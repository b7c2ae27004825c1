"""Debian's cloud kernel as the second kernel choice (``--kernel debian``).

Why it needs more than a file: the cloud kernel has its virtio drivers as modules
and no ``VIRTIO_MMIO_CMDLINE_DEVICES``, so it boots only with (a) an initramfs
that loads virtio_mmio/virtio_blk/… before mounting ``/dev/vda``, and (b) ACPI on
the microvm machine (``-M microvm,acpi=on``), which is how it finds the MMIO
devices. Its ``vmlinuz`` is LZ4-compressed; PVH needs the ELF ``vmlinux``, so it
is extracted. Packages are fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x``: nothing is installed on the host. ``tsc_early_khz`` (the host's
TSC frequency) goes on the command line: without it ~10-15 % of quiet TCG boots
hang (HOST-FACTS.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from smolbox.errors import ImageBuildError
from smolbox.images.buildcache import ensure_built, log_path
from smolbox.images.hashing import sha256_inputs
from smolbox.images.kernel import KernelArtifacts
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.runner import run_step

META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
RECIPE = 1
STEP = "debian kernel"
MACHINE = "microvm,acpi=on,rtc=on"
MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "virtio_rng",
           "virtio_balloon", "vmw_vsock_virtio_transport", "overlay", "squashfs", "virtiofs")
# (magic, decompressor) as in the kernel's scripts/extract-vmlinux
_COMPRESSORS = ((b"\x02\x21\x4c\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd"),
                (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"))
INIT = """#!/bin/busybox sh
# smolbox initramfs for Debian's cloud kernel: load virtio modules, mount /dev/vda,
# hand over to the init= program of the root filesystem.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.order); do insmod "/$module" 2>/dev/null; done
for _ in $(seq 1 500); do [ -b /dev/vda ] && break; sleep 0.01; done
mkdir -p /newroot
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "smolbox initramfs: cannot mount /dev/vda"; sleep 2; poweroff -f
fi
init=/sbin/init
for word in $(cat /proc/cmdline); do case "$word" in init=*) init="${word#init=}";; esac; done
umount /proc /sys /dev
exec switch_root /newroot "$init"
"""


def _candidate(package: str) -> str:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                         check=False)
    match = re.search(r"Candidate:\s*(\S+)", out.stdout)
    if not match or match.group(1) == "(none)":
        raise ImageBuildError(f"apt knows no candidate for {package}",
                              details={"package": package, "output": out.stdout[-500:]},
                              help="Run apt-get update; the host's apt sources must be usable.")
    return match.group(1)


def resolve_package() -> str:
    """The versioned kernel package the cloud meta-package currently points at."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                         text=True, check=False)
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", out.stdout)
    if not match:
        raise ImageBuildError(f"Cannot resolve {META_PACKAGE} with apt-cache",
                              details={"output": (out.stdout + out.stderr)[-500:]},
                              help="Run apt-get update; the host's apt sources must be usable.")
    return match.group(1)


def host_tsc_khz() -> int | None:
    """The host TSC frequency in kHz, from the kernel log (or /proc/cpuinfo)."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        log = ""
    for pattern in (r"Refined TSC clocksource calibration: ([\d.]+) MHz",
                    r"tsc: Detected ([\d.]+) MHz processor"):
        if found := re.findall(pattern, log):
            return round(float(found[-1]) * 1000)
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    if match := re.search(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo):
        return round(float(match.group(1)) * 1000)
    return None


def extract_vmlinux(vmlinuz: Path, dest: Path) -> None:
    """Find the compressed payload in a bzImage and decompress it to an ELF vmlinux."""
    data = vmlinuz.read_bytes()
    for magic, tool in _COMPRESSORS:
        start = data.find(magic)
        while start != -1:
            with dest.open("wb") as sink:
                subprocess.run([tool, "-dc"], input=data[start:], stdout=sink,
                               stderr=subprocess.DEVNULL, check=False)
            with dest.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return
            start = data.find(magic, start + 1)
    raise ImageBuildError(f"No ELF kernel found inside {vmlinuz.name}",
                          details={"path": str(vmlinuz)})


def module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files for ``wanted`` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def build_debian_kernel(build_root: Path, progress: Progress | None = None) -> KernelArtifacts:
    """Fetch, unpack and cache the cloud kernel with its initramfs."""
    progress = progress or NullProgress()
    package = resolve_package()
    inputs: dict[str, object] = {
        "kind": "debian", "package": f"{package}={_candidate(package)}",
        "busybox": f"{BUSYBOX}={_candidate(BUSYBOX)}", "modules": list(MODULES),
        "init": INIT, "recipe": RECIPE,
    }
    key = sha256_inputs(inputs)
    log = log_path(build_root, "kernel-debian", key)

    def produce(out: Path, work: Path) -> None:
        log.write_text("")
        progress.start(STEP)
        run_step(["apt-get", "download", package, BUSYBOX], log=log, step="apt-get download",
                 cwd=work)
        kernel_deb = next(work.glob("linux-image-*.deb"))
        busybox_deb = next(work.glob("busybox-static*.deb"))
        run_step(["dpkg-deb", "-x", str(kernel_deb), str(work / "k")], log=log, step="unpack")
        run_step(["dpkg-deb", "-x", str(busybox_deb), str(work / "bb")], log=log, step="unpack")
        vmlinuz = next((work / "k/boot").glob("vmlinuz-*"))
        extract_vmlinux(vmlinuz, out / "vmlinux")
        modules_dir = next((work / "k/lib/modules").iterdir())
        # modules.dep is made by depmod at install time; make it inside the unpacked tree
        run_step(["depmod", "-b", str(work / "k"), modules_dir.name], log=log, step="depmod")
        initrd = work / "initrd"
        for sub in ("bin", "proc", "sys", "dev", "newroot"):
            (initrd / sub).mkdir(parents=True)
        shutil.copy2(work / "bb/bin/busybox", initrd / "bin/busybox")
        order = module_order(modules_dir, MODULES)
        for module in order:
            target = initrd / module
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules_dir / module, target)
        (initrd / "modules.order").write_text("\n".join(order) + "\n")
        (initrd / "init").write_text(INIT)
        (initrd / "init").chmod(0o755)
        run_step(["sh", "-c", f"cd '{initrd}' && find . | cpio -o -H newc -R 0:0 --quiet "
                              f"| gzip -1 > '{out / 'initrd.img'}'"],
                 log=log, step="initramfs")
        progress.finish(STEP, f"{package}, {len(order)} modules")

    entry = ensure_built(build_root, "kernel-debian", key, produce)
    tsc = host_tsc_khz()
    extra = ("quiet",) + ((f"tsc_early_khz={tsc}",) if tsc else ())
    return KernelArtifacts(vmlinux=entry / "vmlinux", kind="debian", inputs=inputs,
                           initrd=entry / "initrd.img", cmdline_extra=extra, machine=MACHINE)

"""The no-engine baseline: plain QEMU cold boots of the same image to SMOLBOX_READY.

Why build it from ``smolbox.vmm.spec.build_argv``: the baseline must be the very
command line the engine runs (same devices, same kernel arguments), so the ratio
to a template clone shows what snapshots gain and nothing else. Two changes only:
the console goes to a file (instead of QEMU's ring buffer) so readiness can be
seen without QMP, and QEMU is not daemonized, so this process owns it and always
kills it. (``bench/image_boot.py`` times the image package's own smoke-boot
command line; it is the image engineer's check and is run from here too.)
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from smolbox import errors
from smolbox.engine.boot import guest_cmdline
from smolbox.engine.disks import create_overlay
from smolbox.host.accel import choose_accelerator
from smolbox.images import InstalledImage
from smolbox.vmm.process import qemu_binary
from smolbox.vmm.spec import CONSOLE_CHARDEV, VMSpec, build_argv

READY = b"SMOLBOX_READY"


def plain_argv(image: InstalledImage, work: Path, console: Path) -> list[str]:
    spec = VMSpec(name=f"bench-plain-{work.name}", kernel=image.kernel,
                  cmdline=guest_cmdline(image), disk=work / "disk.qcow2", run_dir=work,
                  accel_args=tuple(choose_accelerator().qemu_args))
    argv = build_argv(spec, qemu_binary=qemu_binary())
    argv.remove("-daemonize")
    ring = next(i for i, a in enumerate(argv) if a.startswith(f"ringbuf,id={CONSOLE_CHARDEV},"))
    argv[ring] = f"file,id={CONSOLE_CHARDEV},path={console}"
    return argv


def boot_to_ready_ms(image: InstalledImage, work: Path, *, timeout: float = 60.0) -> float:
    """Spawn QEMU, return ms until ``SMOLBOX_READY`` appears on the console; always kill it."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    console = work / "console.log"
    create_overlay(image.rootfs, work / "disk.qcow2", base_format="raw")
    console.touch()
    argv = plain_argv(image, work, console)
    proc: subprocess.Popen[bytes] | None = None
    seen = b""
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        with open(console, "rb") as log:
            while time.perf_counter() - started < timeout:
                seen = (seen + log.read())[-4096:]
                if READY in seen:
                    return (time.perf_counter() - started) * 1000.0
                if proc.poll() is not None:
                    raise errors.SpawnError(f"plain QEMU exited with {proc.returncode}",
                                            details={"console": seen.decode(errors="replace")})
                time.sleep(0.002)
        raise errors.OperationTimeoutError("plain boot to SMOLBOX_READY", timeout)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)

"""Smoke-boot an installed image under QEMU and wait for ``SMOLBOX_READY``.

Why in the images package: an image is only "built" if it boots. This is the
check the image tests and ``bench/image_boot.py`` share; it is deliberately not
the engine (no QMP, no agent client): one QEMU process, a throwaway qcow2
overlay over the read-only rootfs, the serial console in a file, and the
``SMOLBOX_READY`` line init prints once the agent serves. QEMU is always killed
and the overlay removed, whatever happens.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from smolbox.errors import HostToolMissingError, OperationTimeoutError, SpawnFailedError
from smolbox.images.catalog import InstalledImage

READY = b"SMOLBOX_READY"
AGENT_PORT = "org.smolbox.agent"


def qemu_argv(image: InstalledImage, overlay: Path, serial: Path, socket: Path,
              *, memory_mib: int = 256, accel: str = "tcg") -> list[str]:
    """The microvm command line for ``image`` (TCG unless told otherwise)."""
    argv = [
        "qemu-system-x86_64", "-M", image.machine, "-accel", accel, "-cpu", "max",
        "-m", str(memory_mib), "-nodefaults", "-no-user-config", "-nographic",
        "-serial", f"file:{serial}", "-kernel", str(image.kernel),
        "-append", f"{image.cmdline} quiet random.trust_cpu=on",
        "-drive", f"id=root,file={overlay},format=qcow2,if=none",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,path={socket},server=on,wait=off,id=agent0",
        "-device", f"virtserialport,chardev=agent0,name={AGENT_PORT}",
    ]
    if image.initrd is not None:
        argv += ["-initrd", str(image.initrd)]
    return argv


def boot_until_ready(image: InstalledImage, *, timeout: float = 5.0) -> float:
    """Boot ``image``; return seconds from QEMU spawn to ``SMOLBOX_READY`` on the console."""
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")):
        if shutil.which(tool) is None:
            raise HostToolMissingError(tool, package)
    work = Path(tempfile.mkdtemp(prefix="sbx-boot-"))
    overlay, serial, socket = work / "disk.qcow2", work / "console.log", work / "agent.sock"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs),
                        "-F", "raw", str(overlay)], check=True, capture_output=True)
        serial.touch()
        started = time.monotonic()
        proc = subprocess.Popen(qemu_argv(image, overlay, serial, socket),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        while time.monotonic() - started < timeout:
            if READY in serial.read_bytes():
                return time.monotonic() - started
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                console = serial.read_text(errors="replace")
                raise SpawnFailedError(f"QEMU exited with {proc.returncode} before readiness",
                                       details={"stderr": err[-2000:], "console": console[-2000:]})
            time.sleep(0.01)
        raise OperationTimeoutError(
            "boot to SMOLBOX_READY", timeout,
            details={"console": serial.read_text(errors="replace")[-2000:]})
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(work, ignore_errors=True)

"""What the figures were measured on: without this, no figure can be compared.

Records the accelerator smolbox chose (the probe's reason too), cores, CPU model,
memory, QEMU version, the image and its guest kernel, and the load average —
the load matters most here, since other jobs may share the cores.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from smolbox.host.accel import choose_accelerator
from smolbox.images import InstalledImage


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True, check=False, timeout=10).stdout
    except OSError:
        return "missing"
    return out.splitlines()[0].strip() if out else "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe_host(image: InstalledImage, guest_kernel: str) -> dict[str, Any]:
    accel = choose_accelerator()
    return {
        "accelerator": accel.name, "kvm_usable": accel.kvm_usable,
        "accelerator_reason": accel.reason, "cores": os.cpu_count(),
        "cpu_model": _cpu_model(), "memory_gib": _memory_gib(),
        "qemu": _qemu_version(), "host_kernel": platform.release(),
        "python": platform.python_version(), "image": image.ref,
        "image_kernel_kind": image.manifest.kernel_kind, "guest_kernel": guest_kernel,
    }

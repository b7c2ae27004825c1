"""The host's TSC frequency, for the guest command line (``tsc_early_khz=``).

Why: a guest kernel calibrating its TSC under software emulation sometimes hangs
at boot (10-15 % of quiet boots here); telling it the frequency skips the
calibration. The value must come from this host at run time, never be written
into the code. Sources, most exact first:

1. ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` (exported by some kernels);
2. the host kernel's own calibration in its log (``/dev/kmsg``): "Refined TSC
   clocksource calibration" or "tsc: Detected N MHz processor";
3. ``cpu MHz`` in ``/proc/cpuinfo``, only with the ``constant_tsc`` flag (otherwise
   that number is the current, scaled core clock, not the TSC rate).
"""

from __future__ import annotations

import errno
import functools
import os
import re
from pathlib import Path

__all__ = ["tsc_khz"]

_SYSFS = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
_KMSG = Path("/dev/kmsg")
_CPUINFO = Path("/proc/cpuinfo")
_REFINED = re.compile(r"Refined TSC clocksource calibration: (\d+\.\d+) MHz")
_DETECTED = re.compile(r"tsc: Detected (\d+\.\d+) MHz (?:processor|TSC)")
_KMSG_RECORD_LIMIT = 20_000


def _mhz_to_khz(text: str) -> int:
    return round(float(text) * 1000)


def from_sysfs(path: Path = _SYSFS) -> int | None:
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def from_kernel_log(path: Path = _KMSG) -> int | None:
    """Scan the kernel log without blocking (needs the right to read it; else None)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    refined: int | None = None
    detected: int | None = None
    try:
        for _ in range(_KMSG_RECORD_LIMIT):
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break  # end of the buffer
            except OSError as err:
                if err.errno == errno.EPIPE:
                    continue  # record overwritten while reading: skip it
                break
            if not record:
                break
            if match := _REFINED.search(record):
                refined = _mhz_to_khz(match[1])
            elif match := _DETECTED.search(record):
                detected = _mhz_to_khz(match[1])
    finally:
        os.close(fd)
    return refined or detected


def from_cpuinfo(path: Path = _CPUINFO) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    first_cpu = text.split("\n\n", 1)[0]
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in first_cpu.splitlines())
    )
    if "constant_tsc" not in fields.get("flags", "").split():
        return None
    try:
        khz = _mhz_to_khz(fields["cpu MHz"])
    except (KeyError, ValueError):
        return None
    return khz if khz > 0 else None


@functools.cache
def tsc_khz() -> int | None:
    """The host TSC frequency in kHz, or None when no trustworthy source exists."""
    return from_sysfs() or from_kernel_log() or from_cpuinfo()

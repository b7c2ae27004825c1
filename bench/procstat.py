"""Memory and CPU of QEMU processes, read from /proc.

Why PSS and not only RSS: clones map the template's RAM file copy-on-write, so
their resident pages are largely shared; RSS counts a shared page once per
process (summing it over-counts), PSS divides it among the sharers (summing PSS
gives the real footprint). Both are reported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    rss_mib: float
    pss_mib: float


def memory_of(pid: int) -> Memory:
    """RSS and PSS of ``pid`` from ``/proc/PID/smaps_rollup`` (kB fields)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("Rss", "Pss") and parts:
            fields[key] = int(parts[0]) / 1024.0
    return Memory(rss_mib=fields.get("Rss", 0.0), pss_mib=fields.get("Pss", 0.0))


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all threads) in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def idle_cpu_percent(pids: list[int], window_s: float) -> list[float]:
    """CPU use of each process over ``window_s`` seconds, in percent of one core."""
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    after = [cpu_seconds(pid) for pid in pids]
    return [100.0 * (b - a) / elapsed for a, b in zip(before, after, strict=True)]

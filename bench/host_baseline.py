"""The host itself as the yardstick: process spawn and file copy without any VM.

Why: "exec true takes 40 ms" means little alone; next to the host's own
``subprocess.run(["true"])`` it shows what the VM boundary and emulation cost.
The host copy goes through the page cache (no fsync), as guest writes do
(the guest disk runs with cache=unsafe).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.clock import repeat_ms, timed_ms
from bench.profile import Counts
from bench.results import Metric, RunRecord

MIB = 1 << 20


def run_host_true(record: RunRecord, counts: Counts) -> None:
    def once() -> None:
        subprocess.run(["true"], check=True)

    once()  # warm the binary into the page cache
    record.add(Metric("host_true", 'host subprocess.run(["true"])', "host", "ms",
                      repeat_ms(counts.host_true, once)))


def run_host_copy(record: RunRecord, counts: Counts, scratch: Path, payload: bytes) -> None:
    source, target = scratch / "copy-src.bin", scratch / "copy-dst.bin"
    source.write_bytes(payload)
    size_mib = len(payload) / MIB

    def once() -> float:
        elapsed, _ = timed_ms(lambda: shutil.copyfile(source, target))
        os.unlink(target)
        return elapsed

    try:
        once()
        samples = [once() for _ in range(counts.host_copies)]
        record.add(Metric(f"host_copy_{size_mib:g}mib", f"host file copy {size_mib:g} MiB",
                          "host", "ms", samples,
                          derived_unit="MiB/s", derived_scale=size_mib * 1000.0,
                          note="shutil.copyfile, page cache, no fsync"))
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)

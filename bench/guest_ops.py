"""Work inside one running clone: exec round trips, bulk output, file transfer.

Why on a clone: that is what users get from ``create()``; one machine serves all
repetitions, so these rows measure the agent channel and the guest, not starts.
Every transfer is checked for correct content (outside the timed window) — a fast
wrong answer is not a figure.
"""

from __future__ import annotations

import hashlib
import os

from bench.clock import repeat_ms, timed_ms
from bench.profile import Counts
from bench.results import Metric, RunRecord, Target
from smolbox.engine.engine import Engine

GROUP = "guest"
MIB = 1 << 20
GUEST_FILE = "/root/bench.bin"  # on the root disk (qcow2 overlay), not in guest RAM
TMPFS_FILE = "/tmp/bench.bin"  # in guest RAM (tmpfs)


def run_exec(record: RunRecord, counts: Counts, engine: Engine, vm: str) -> None:
    engine.exec(vm, ["true"]).assert_success()  # warm the agent connection
    record.add(Metric("exec_true", "exec true round trip", GROUP, "ms",
                      repeat_ms(counts.exec_true, lambda: engine.exec(vm, ["true"])),
                      target=Target("<=", 40, "ms", "issue 5"),
                      note="guest fork+exec under TCG dominates"))
    samples: list[float] = []
    for _ in range(counts.exec_1mib):
        elapsed, result = timed_ms(
            lambda: engine.exec(vm, ["head", "-c", str(MIB), "/dev/zero"]))
        if len(result.stdout_bytes) != MIB:
            raise RuntimeError(f"exec returned {len(result.stdout_bytes)} bytes, not 1 MiB")
        samples.append(elapsed)
    record.add(Metric("exec_1mib", "exec with 1 MiB stdout", GROUP, "ms", samples,
                      derived_unit="MiB/s", derived_scale=1000.0,
                      note="head -c 1048576 /dev/zero"))


def run_files(record: RunRecord, counts: Counts, engine: Engine, vm: str,
              payload: bytes) -> None:
    """Host -> guest three ways, guest -> host two ways.

    ``engine.write_file`` takes the transfer disk for large files (the default path
    for SDK users); the agent's own ``write_file`` is the virtio-serial stream it
    falls back to. The tmpfs variant shows what the guest's disk write-back costs.
    """
    size_mib = len(payload) / MIB
    digest = hashlib.sha256(payload).hexdigest()
    writes: list[float] = []
    serial_writes: list[float] = []
    tmpfs_writes: list[float] = []
    reads: list[float] = []
    stream_reads: list[float] = []
    with engine.guest(vm, "files") as agent:
        try:
            for _ in range(counts.file_repeats):
                writes.append(timed_ms(lambda: engine.write_file(vm, GUEST_FILE, payload))[0])
                for read, samples in ((lambda: engine.read_file(vm, GUEST_FILE), reads),
                                      (lambda: agent.read_file(GUEST_FILE), stream_reads)):
                    elapsed, back = timed_ms(read)
                    if hashlib.sha256(back).hexdigest() != digest:
                        raise RuntimeError("file read back from the guest differs")
                    samples.append(elapsed)
                    del back
                serial_writes.append(timed_ms(lambda: agent.write_file(GUEST_FILE, payload))[0])
                tmpfs_writes.append(timed_ms(lambda: engine.write_file(vm, TMPFS_FILE,
                                                                       payload))[0])
                agent.remove(TMPFS_FILE)  # guest RAM: do not keep it
        finally:
            agent.remove(GUEST_FILE)
    target = Target(">=", 100, "MiB/s", "issue 5")
    scale = size_mib * 1000.0
    record.add(Metric(f"file_write_{size_mib:g}mib", f"file write host->guest {size_mib:g} MiB",
                      GROUP, "ms", writes, derived_unit="MiB/s", derived_scale=scale,
                      target=target, target_on="derived",
                      note="engine.write_file to the root disk: transfer disk (O_DIRECT "
                           "copy) + atomic rename"))
    record.add(Metric(f"file_write_serial_{size_mib:g}mib",
                      f"file write host->guest {size_mib:g} MiB, virtio-serial stream",
                      GROUP, "ms", serial_writes, derived_unit="MiB/s", derived_scale=scale,
                      note="agent write_file (the fallback path), same destination"))
    record.add(Metric(f"file_write_tmpfs_{size_mib:g}mib",
                      f"file write host->guest {size_mib:g} MiB into tmpfs",
                      GROUP, "ms", tmpfs_writes, derived_unit="MiB/s", derived_scale=scale,
                      note="engine.write_file to /tmp: no guest disk write-back"))
    record.add(Metric(f"file_read_{size_mib:g}mib", f"file read guest->host {size_mib:g} MiB",
                      GROUP, "ms", reads, derived_unit="MiB/s",
                      derived_scale=scale, target=target, target_on="derived",
                      note="engine.read_file: transfer disk; content verified by SHA-256"))
    record.add(Metric(f"file_read_stream_{size_mib:g}mib",
                      f"file read guest->host {size_mib:g} MiB, virtio-serial stream",
                      GROUP, "ms", stream_reads, derived_unit="MiB/s", derived_scale=scale,
                      note="agent read_file (the fallback path)"))


def random_payload(size_mib: int) -> bytes:
    """Incompressible bytes, so no layer can shortcut the transfer."""
    return os.urandom(size_mib * MIB)


def guest_kernel(engine: Engine, vm: str) -> str:
    result = engine.exec(vm, ["uname", "-r"])
    return result.stdout_bytes.decode(errors="replace").strip() or "unknown"

"""The order of the run: one step per measurement family, all into one record.

Why an explicit list of steps: the order is part of the method (host baselines
first; cold boots before the template exists; the density probe last, since it
loads the host most), and a failing step stops the run but keeps what was
measured so far, with the error, in the record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import density, guest_ops, host_baseline, lifecycle, start
from bench.clock import timed_ms
from bench.machine_info import describe_host
from bench.profile import Counts
from bench.results import Ratio, RunRecord
from bench.sandbox import Sandbox
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.images import InstalledImage
from smolbox.images.testing import ensure_default_image
from smolbox.paths import Paths

RATIOS = [
    Ratio("exec_vs_host", "exec true in a machine / host subprocess.run([\"true\"])",
          "exec_true", "host_true", "times slower than spawning on the host"),
    Ratio("file_write_vs_host_copy", "guest file write / host file copy (time, same size)",
          "file_write_{mib}mib", "host_copy_{mib}mib", "times slower than a host copy"),
    Ratio("plain_boot_vs_clone", "plain QEMU cold boot / create() from template (ready)",
          "plain_qemu_boot", "clone_ready", "speed-up of snapshot clones over a plain boot"),
    Ratio("plain_boot_vs_clone_exec", "plain QEMU cold boot / create() to first exec result",
          "plain_qemu_boot", "clone_first_exec", "speed-up, including the first command"),
    Ratio("engine_cold_vs_clone", "engine cold boot / create() from template (ready)",
          "engine_cold_boot", "clone_ready", "speed-up inside the engine"),
    Ratio("pss_cold_vs_clone", "PSS of an idle cold machine / PSS of an idle clone",
          "idle_pss_cold", "idle_pss_clone", "memory saved by sharing the template's RAM"),
]


@dataclass
class Context:
    record: RunRecord
    counts: Counts
    box: Sandbox
    image: InstalledImage | None = None
    engine: Engine | None = None
    template: str = ""
    payload: bytes = b""

    @property
    def eng(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("engine not started")
        return self.engine


def _setup(ctx: Context) -> None:
    elapsed, ctx.image = timed_ms(lambda: ensure_default_image(Paths.from_env()))
    ctx.record.facts["image_install_ms_once"] = round(elapsed, 1)
    ctx.engine = ctx.box.engine = Engine()
    ctx.payload = guest_ops.random_payload(ctx.counts.file_mib)


def _host(ctx: Context) -> None:
    host_baseline.run_host_true(ctx.record, ctx.counts)
    host_baseline.run_host_copy(ctx.record, ctx.counts, ctx.box.scratch, ctx.payload)


def _plain(ctx: Context) -> None:
    assert ctx.image is not None
    start.run_plain_boots(ctx.record, ctx.counts, ctx.image, ctx.box)


def _cold(ctx: Context) -> None:
    start.run_cold_boots(ctx.record, ctx.counts, ctx.eng)


def _template(ctx: Context) -> None:
    ctx.template = start.build_template(ctx.record, ctx.eng)


def _clones(ctx: Context) -> None:
    start.run_template_creates(ctx.record, ctx.counts, ctx.eng)


def _pool(ctx: Context) -> None:
    start.run_pool_creates(ctx.record, ctx.counts)


def _forks(ctx: Context) -> None:
    start.run_forks(ctx.record, ctx.counts, ctx.eng, ctx.template)


def _work(ctx: Context) -> None:
    """Exec, files and pause/resume share one clone."""
    assert ctx.image is not None
    vm = ctx.eng.create(MachineConfig()).id
    try:
        ctx.record.host = describe_host(ctx.image, guest_ops.guest_kernel(ctx.eng, vm))
        guest_ops.run_exec(ctx.record, ctx.counts, ctx.eng, vm)
        guest_ops.run_files(ctx.record, ctx.counts, ctx.eng, vm, ctx.payload)
        lifecycle.run_pause_resume(ctx.record, ctx.counts, ctx.eng, vm)
    finally:
        ctx.eng.delete(vm, force=True)


def _snapshots(ctx: Context) -> None:
    lifecycle.run_snapshots(ctx.record, ctx.counts, ctx.eng)


def _cycles(ctx: Context) -> None:
    lifecycle.run_create_delete(ctx.record, ctx.counts, ctx.eng)


def _idle(ctx: Context) -> None:
    density.run_idle(ctx.record, ctx.counts, ctx.eng)


def _max_concurrent(ctx: Context) -> None:
    density.run_max_concurrent(ctx.record, ctx.counts, ctx.eng)


STEPS: list[tuple[str, Callable[[Context], None]]] = [
    ("setup: image + engine", _setup), ("host baselines", _host),
    ("plain QEMU cold boots", _plain), ("engine cold boots", _cold),
    ("template snapshot (once)", _template), ("create from template", _clones),
    ("create from warm pool", _pool),
    ("fork", _forks), ("exec, files, pause/resume", _work),
    ("snapshot save/restore", _snapshots),
    ("create/delete cycles", _cycles), ("idle footprint", _idle),
    ("max concurrent idle machines", _max_concurrent),
]


def run(record: RunRecord, counts: Counts, box: Sandbox) -> None:
    """Run every step in order; the first failure is recorded and ends the run."""
    ctx = Context(record=record, counts=counts, box=box)
    mib = counts.file_mib
    record.ratios = [Ratio(r.key, r.label, r.numerator.format(mib=mib),
                           r.denominator.format(mib=mib), r.meaning) for r in RATIOS]
    began = time.monotonic()
    for name, step in STEPS:
        print(f"[{time.monotonic() - began:6.1f}s] {name}", file=sys.stderr, flush=True)
        try:
            step(ctx)
        except Exception as err:
            details = getattr(err, "details", None)
            record.error = f"{name}: {type(err).__name__}: {err}" + (
                f" {details}" if details else "")
            print(f"step failed: {record.error}", file=sys.stderr, flush=True)
            return

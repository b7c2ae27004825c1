"""Start latency: cold boots (plain QEMU and engine), template clones, forks.

Why all in one module: these are the numbers the plot compares, and they must be
taken the same way — wall time around one public call, machines deleted outside
the timed window. "Clone" (create from the automatic template snapshot) and "fork" (N
clones of one snapshot at once) are the fast paths measured against cold boots.
"""

from __future__ import annotations

from bench import image_boot
from bench.clock import timed_ms
from bench.plain_qemu import boot_to_ready_ms
from bench.profile import Counts
from bench.results import Metric, RunRecord, Target
from bench.sandbox import Sandbox
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.images import InstalledImage

GROUP = "start"


def run_plain_boots(record: RunRecord, counts: Counts, image: InstalledImage,
                    box: Sandbox) -> None:
    samples = [boot_to_ready_ms(image, box.run / f"plain{i}") for i in range(counts.plain_boots)]
    record.add(Metric("plain_qemu_boot", "plain QEMU cold boot to SMOLBOX_READY (engine argv)",
                      GROUP, "ms", samples,
                      note="build_argv without -daemonize, console to a file; no engine"))
    smoke = image_boot.measure(image, counts.image_boots)
    record.add(Metric("image_smoke_boot", "plain QEMU cold boot, image smoke argv (image_boot)",
                      GROUP, "ms", smoke, note="smolbox.images.bootcheck command line"))


def run_cold_boots(record: RunRecord, counts: Counts, engine: Engine) -> None:
    samples: list[float] = []
    for _ in range(counts.cold_boots):
        elapsed, vm = timed_ms(lambda: engine.create(MachineConfig(from_template=False)))
        samples.append(elapsed)
        engine.delete(vm.id, force=True)
    record.add(Metric("engine_cold_boot", "engine cold boot to agent ready", GROUP, "ms",
                      samples, note="create(MachineConfig(from_template=False))"))


def build_template(record: RunRecord, engine: Engine) -> str:
    """Make the template snapshot once (a one-off per image version; not a metric)."""
    image = engine.images.get(MachineConfig().image)
    elapsed, snap = timed_ms(lambda: engine.template_for(image, MachineConfig()))
    record.facts["template_build_ms_once"] = round(elapsed, 1)
    record.facts["template_snapshot_mib"] = round((snap.size or 0) / (1 << 20), 1)
    return snap.name


def run_template_creates(record: RunRecord, counts: Counts, engine: Engine) -> None:
    ready: list[float] = []
    exec_only: list[float] = []
    first_exec: list[float] = []
    for _ in range(counts.template_creates):
        created, vm = timed_ms(lambda: engine.create(MachineConfig()))
        executed, result = timed_ms(lambda: engine.exec(vm.id, ["true"]))  # noqa: B023
        result.assert_success()
        ready.append(created)
        exec_only.append(executed)
        first_exec.append(created + executed)
        engine.delete(vm.id, force=True)
    record.add(Metric("clone_ready", "create() from template to agent ready", GROUP, "ms",
                      ready))
    record.add(Metric("clone_exec_only", "first exec true on a fresh clone (alone)", GROUP,
                      "ms", exec_only,
                      note="compare with the warm exec round trip: cold caches after restore"))
    record.add(Metric("clone_first_exec", "create() from template to first exec result",
                      GROUP, "ms", first_exec,
                      target=Target("<=", 250, "ms", "issue 5, TCG"), target_on="p95",
                      note="p50 and p95 reported; the target applies to p95"))


def run_forks(record: RunRecord, counts: Counts, engine: Engine, snapshot: str) -> None:
    for size, repeats in zip(counts.fork_sizes, counts.fork_repeats, strict=True):
        samples: list[float] = []
        for _ in range(repeats):
            elapsed, made = timed_ms(lambda: engine.fork(snapshot, size))  # noqa: B023
            samples.append(elapsed)
            for vm in made:
                engine.delete(vm.id, force=True)
        record.add(Metric(f"fork_{size}", f"fork N={size} clones to all ready", GROUP, "ms",
                          samples,
                          note=f"engine.fork(template, {size}); wall time until all answer"))


def run_pool_creates(record: RunRecord, counts: Counts) -> None:
    """create() served by a warm pool of 2; each sample waits for the refill first,
    so it measures a hand-out, not a pool that ran dry."""
    first_exec: list[float] = []
    with Engine(warm_pool=2) as pooled:
        assert pooled.pool is not None
        for _ in range(counts.template_creates):
            pooled.pool.wait_ready(2, timeout=120)
            created, vm = timed_ms(lambda: pooled.create(MachineConfig()))
            executed, result = timed_ms(lambda: pooled.exec(vm.id, ["true"]))  # noqa: B023
            result.assert_success()
            first_exec.append(created + executed)
            pooled.delete(vm.id, force=True)
    record.add(Metric("pool_first_exec", "create() from the warm pool to first exec result",
                      GROUP, "ms", first_exec,
                      target=Target("<=", 250, "ms", "issue 5, TCG"), target_on="p95",
                      note="Engine(warm_pool=2): restored and warmed before the request"))

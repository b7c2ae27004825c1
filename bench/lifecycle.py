"""Lifecycle operations on clones: snapshot save/restore, pause/resume, create/delete.

Why these: an agent platform snapshots to branch work, pauses idle sandboxes, and
churns through many short-lived ones; each is one engine call, timed alone.
"""

from __future__ import annotations

from contextlib import suppress

from bench.clock import timed_ms
from bench.profile import Counts
from bench.results import Metric, RunRecord
from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine

GROUP = "lifecycle"


def run_snapshots(record: RunRecord, counts: Counts, engine: Engine) -> None:
    """Save and restore on a clone of its own.

    The snapshots are deleted only after the machine: a restored machine's disk is
    an overlay over the snapshot's disk, so deleting the snapshot first would pull
    the backing file out from under it.
    """
    vm = engine.create(MachineConfig()).id
    names: list[str] = []
    saves: list[float] = []
    restores: list[float] = []
    try:
        for i in range(counts.snapshots):
            names.append(f"bench-snap-{i}")
            saves.append(timed_ms(lambda: engine.snapshot(vm, names[-1]))[0])
            restores.append(timed_ms(lambda: engine.restore(vm, names[-1]))[0])
            engine.exec(vm, ["true"]).assert_success()
    finally:
        engine.delete(vm, force=True)
        # Newest first: each snapshot's disk builds on the one restored before it.
        for name in reversed(names):
            with suppress(errors.SnapshotNotFoundError):
                engine.delete_snapshot(name)
    record.add(Metric("snapshot_save", "snapshot save (running clone, 256 MiB)", GROUP, "ms",
                      saves, note="pause, save, copy disk, normalize to a RAM file, SHA-256"))
    record.add(Metric("snapshot_restore", "snapshot restore into the machine to agent ready",
                      GROUP, "ms", restores, note="engine.restore: stop, load, handshake"))


def run_pause_resume(record: RunRecord, counts: Counts, engine: Engine, vm: str) -> None:
    pauses: list[float] = []
    resumes: list[float] = []
    for _ in range(counts.pause_resume):
        pauses.append(timed_ms(lambda: engine.pause(vm))[0])
        resumes.append(timed_ms(lambda: engine.resume(vm))[0])
    engine.exec(vm, ["true"]).assert_success()
    record.add(Metric("pause", "pause (QMP stop)", GROUP, "ms", pauses))
    record.add(Metric("resume", "resume (QMP cont + guest clock sync)", GROUP, "ms", resumes))


def run_create_delete(record: RunRecord, counts: Counts, engine: Engine) -> None:
    def cycle() -> None:
        vm = engine.create(MachineConfig())
        engine.delete(vm.id, force=True)

    samples = [timed_ms(cycle)[0] for _ in range(counts.create_delete_cycles)]
    record.add(Metric("create_delete_cycle", "create + delete cycle (from template)", GROUP,
                      "ms", samples, derived_unit="cycles/min", derived_scale=60_000.0,
                      note="sequential; cycles/min = 60 s / median cycle"))

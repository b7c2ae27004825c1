"""Every rollback branch of the lifecycle, driven by a fake launcher that fails at step N.

Each test makes one step fail (see ``fake_vmm.py``) and then asserts that nothing is
left: no machine row, no pending snapshot row, no machine/run/temp directory, no
fake VMM still alive, no agent connection open — and that the next operation
works. The store, files, overlays and snapshot manifests are real; only QEMU and
the guest agent are fakes, so these run in seconds without a VM.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_vmm import FakeLauncher

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.images import ImageCatalog, ImageFile, ImageManifest
from smolbox.images.hashing import sha256_file
from smolbox.images.manifest import BASE_CMDLINE
from smolbox.paths import Paths
from smolbox.store import MachineRecord

SMALL = {"memory_mib": 128}


def install_small_image(paths: Paths) -> None:
    """A real catalogue entry with small real files (the fake VMM never reads them)."""
    catalog = ImageCatalog(paths)
    image_dir = catalog.staging_dir() / "image"
    image_dir.mkdir()
    (image_dir / "vmlinux").write_bytes(b"K" * 1000)
    (image_dir / "rootfs.ext4").write_bytes(b"\0" * (1 << 20))
    files = {p.name: ImageFile(size=p.stat().st_size, sha256=sha256_file(p))
             for p in image_dir.iterdir()}
    manifest = ImageManifest(name="default", version="v1", kernel="vmlinux",
                             kernel_kind="minimal", rootfs="rootfs.ext4", cmdline=BASE_CMDLINE,
                             files=files, build={"test": True})
    catalog.install(image_dir, manifest)
    image_dir.parent.rmdir()


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(home=tmp_path / "home", images=tmp_path / "home" / "images",
              cache=tmp_path / "cache", run=tmp_path / "run")
    p.ensure(p.home, p.images, p.cache)
    install_small_image(p)
    return p


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def engine(paths: Paths, launcher: FakeLauncher) -> Iterator[Engine]:
    eng = Engine(paths, launcher=launcher)
    yield eng
    eng.close()


def fail_at(launcher: FakeLauncher, step: str, nth: int = 1) -> None:
    """Arm the plan: the ``nth`` call of ``step`` from now on fails."""
    launcher.plan.step = step
    launcher.plan.nth = launcher.plan.calls[step] + nth


def disarm(launcher: FakeLauncher) -> None:
    launcher.plan.step = None


def leftovers(engine: Engine, launcher: FakeLauncher,
              keep: set[str] | None = None) -> dict[str, object]:
    """Everything a failed operation could have left behind (empty when clean)."""
    keep = keep or set()
    paths = engine.paths
    machines = [r.id for r in engine.store.list_machines(None) if r.id not in keep]
    machine_dirs = [p.name for p in (paths.home / "machines").glob("*") if p.name not in keep]
    run_dirs = [p.name for p in paths.run.glob("*") if p.is_dir() and p.name not in keep]
    temp = [p.name for p in paths.snapshots.glob(".tmp-*")] if paths.snapshots.exists() else []
    live_keep = {engine.get(k).pid for k in keep}
    found = {
        "machine rows": machines,
        "pending snapshots": [s.id for s in engine.store.list_pending_snapshots()],
        "machine dirs": machine_dirs,
        "run dirs": run_dirs,
        "snapshot temp dirs": temp,
        "live VMMs": [v.identity.pid for v in launcher.live() if v.identity.pid not in live_keep],
    }
    return {key: value for key, value in found.items() if value}


def snapshot_ids(engine: Engine) -> set[str]:
    return {s.id for s in engine.store.list_snapshots()}


def test_a_working_create_and_delete_leave_nothing(engine: Engine,
                                                   launcher: FakeLauncher) -> None:
    """The baseline the failure tests compare against: the fake path works end to end."""
    record = engine.create(MachineConfig(**SMALL))
    assert record.state == "running" and record.source_snapshot
    assert engine.exec(record.id, ["true"]).success
    engine.delete(record.id)
    assert leftovers(engine, launcher) == {}
    assert not launcher.open_agents()


@pytest.mark.parametrize("step", ["spawn", "load_state", "qmp:cont", "claim_agent",
                                  "set_identity", "set_env"])
def test_create_from_template_rolls_back_at_every_step(engine: Engine, launcher: FakeLauncher,
                                                       step: str) -> None:
    engine.delete(engine.create(MachineConfig(**SMALL)).id)  # the template exists now
    templates = snapshot_ids(engine)
    fail_at(launcher, step)
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.create(MachineConfig(name="will-fail", env={"A": "1"}, **SMALL))
    assert leftovers(engine, launcher) == {}
    assert not launcher.open_agents()
    assert snapshot_ids(engine) == templates  # the template is untouched
    disarm(launcher)
    again = engine.create(MachineConfig(name="will-fail", **SMALL))  # the name is free again
    assert again.name == "will-fail"
    engine.delete(again.id)


@pytest.mark.parametrize("step", ["spawn", "claim_agent", "set_identity", "exec"])
def test_cold_boot_rolls_back_including_guest_network_setup(engine: Engine,
                                                            launcher: FakeLauncher,
                                                            step: str) -> None:
    """``exec`` here is the guest network configuration of a user-mode machine."""
    fail_at(launcher, step)
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.create(MachineConfig(network={"mode": "user", "egress": "open"}, **SMALL))
    assert leftovers(engine, launcher) == {}
    assert not launcher.open_agents()


def test_a_guest_network_command_that_fails_is_a_network_setup_error(
        engine: Engine, launcher: FakeLauncher) -> None:
    """The guest runs its network configuration and it exits non-zero: the create
    fails as NETWORK_SETUP_FAILED naming the step, and nothing is left."""
    fail_at(launcher, "exec:exit1")
    with pytest.raises(errors.NetworkSetupError) as caught:
        engine.create(MachineConfig(network={"mode": "user", "egress": "open"}, **SMALL))
    assert caught.value.details["step"] == "configure guest"
    assert "File exists" in caught.value.details["stderr"]
    assert leftovers(engine, launcher) == {}
    assert not launcher.open_agents()


@pytest.mark.parametrize("step,nth", [("spawn", 1), ("spawn", 2), ("qmp:cont", 1),
                                      ("load_state", 1), ("save_state", 1), ("save_state", 2),
                                      ("set_identity", 1)])
def test_template_build_interrupted_anywhere_never_poisons_later_creates(
        engine: Engine, launcher: FakeLauncher, step: str, nth: int) -> None:
    """Builder boot (spawn 1), snapshot save (save 1), the normalising helper (spawn 2,
    load, save 2), and the first clone after the template (cont, set_identity)."""
    fail_at(launcher, step, nth)
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.create(MachineConfig(**SMALL))
    assert leftovers(engine, launcher) == {}, f"after a failure at {step}#{nth}"
    disarm(launcher)
    record = engine.create(MachineConfig(**SMALL))
    assert record.state == "running"
    engine.delete(record.id)
    assert leftovers(engine, launcher) == {}


def test_template_is_built_once_under_concurrent_creates(engine: Engine,
                                                         launcher: FakeLauncher) -> None:
    made: list[MachineRecord] = []
    failures: list[BaseException] = []

    def create() -> None:
        try:
            made.append(engine.create(MachineConfig(**SMALL)))
        except BaseException as err:  # collected and asserted below
            failures.append(err)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    templates = [s for s in engine.store.list_snapshots() if s.manifest.get("template")]
    assert len(templates) == 1
    # one builder boot + one normalising helper + four clones
    assert launcher.plan.calls["spawn"] == 6
    for record in made:
        engine.delete(record.id)
    assert leftovers(engine, launcher) == {}


@pytest.mark.parametrize("step", ["qmp:stop", "save_state", "spawn", "load_state"])
def test_interrupted_snapshot_leaves_no_row_no_files_and_the_source_running(
        engine: Engine, launcher: FakeLauncher, step: str) -> None:
    source = engine.create(MachineConfig(name="source", **SMALL))
    before = snapshot_ids(engine)
    fail_at(launcher, step)
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.snapshot("source", "half")
    assert leftovers(engine, launcher, keep={source.id}) == {}
    assert snapshot_ids(engine) == before
    vmm = launcher.vmms[engine.get(source.id).pid]  # type: ignore[index]
    if "stop" in vmm.commands:
        assert vmm.commands[-1] == "cont", "the source must not stay paused"
    disarm(launcher)
    made = engine.snapshot("source", "half")  # the name is reusable
    assert made.name == "half"
    engine.delete(source.id)
    engine.delete_snapshot("half")


def test_fork_with_one_clone_failing_is_all_or_nothing(engine: Engine,
                                                       launcher: FakeLauncher) -> None:
    source = engine.create(MachineConfig(name="forked", **SMALL))
    engine.snapshot("forked", "base")
    fail_at(launcher, "claim_agent", 3)
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.fork("base", 4)
    assert leftovers(engine, launcher, keep={source.id}) == {}
    disarm(launcher)
    clones = engine.fork("base", 2)
    assert len(clones) == 2
    for record in [*clones, source]:
        engine.delete(record.id)
    engine.delete_snapshot("base")
    assert leftovers(engine, launcher) == {}


def test_restore_failing_leaves_the_machine_stopped_and_restorable(
        engine: Engine, launcher: FakeLauncher) -> None:
    record = engine.create(MachineConfig(name="restored", **SMALL))
    engine.snapshot("restored", "point")
    fail_at(launcher, "load_state")
    with pytest.raises(errors.SmolboxError, match="injected failure"):
        engine.restore("restored", "point")
    assert engine.get("restored").state == "stopped"
    assert [v for v in launcher.live() if v.spec.name == record.id] == []
    disarm(launcher)
    assert engine.restore("restored", "point").state == "running"
    engine.delete("restored")
    engine.delete_snapshot("point")
    assert leftovers(engine, launcher) == {}


def test_delete_that_fails_half_way_can_be_finished(engine: Engine,
                                                    launcher: FakeLauncher) -> None:
    record = engine.create(MachineConfig(name="stubborn", **SMALL))
    fail_at(launcher, "stop")
    with pytest.raises(errors.ShutdownError):
        engine.delete("stubborn", force=True)
    assert not launcher.open_agents()  # the connection is dropped either way
    disarm(launcher)
    engine.delete("stubborn", force=True)
    assert leftovers(engine, launcher) == {}
    with pytest.raises(errors.VMNotFoundError):
        engine.get(record.id)


def test_warm_pool_falls_back_to_a_fresh_machine_when_adoption_fails(
        paths: Paths, launcher: FakeLauncher) -> None:
    with Engine(paths, launcher=launcher, warm_pool=1,
                pool_config=MachineConfig(**SMALL)) as engine:
        assert engine.pool is not None
        assert engine.pool.wait_ready(1, timeout=30) == 1
        pooled = {r.id for r in engine.list_machines()}
        fail_at(launcher, "set_identity", 1)  # the adoption's identity update
        record = engine.create(MachineConfig(name="adopted", **SMALL))
        disarm(launcher)
        assert record.name == "adopted" and record.id not in pooled
        assert not pooled & {r.id for r in engine.list_machines()}, "pool machine left behind"
        engine.delete(record.id)
    with Engine(paths, launcher=launcher) as after:  # the pool deleted its machines on close
        assert leftovers(after, launcher) == {}


def test_errors_name_machines_the_way_the_user_does(engine: Engine,
                                                    launcher: FakeLauncher) -> None:
    record = engine.create(MachineConfig(name="heldout-a", **SMALL))
    engine.stop("heldout-a")
    with pytest.raises(errors.InvalidTransitionError) as caught:
        engine.pause("heldout-a")
    assert caught.value.vm_id == "heldout-a"
    assert "heldout-a" in caught.value.message and record.id not in caught.value.message
    assert caught.value.details["id"] == record.id
    engine.delete("heldout-a")


def test_admission_refuses_before_anything_is_made(engine: Engine, launcher: FakeLauncher,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = engine.create(MachineConfig(name="one", **SMALL))
    engine.snapshot("one", "shape")
    spawned = launcher.plan.calls["spawn"]
    monkeypatch.setenv("SMOLBOX_MAX_MACHINES", "2")
    with pytest.raises(errors.CapacityExhaustedError) as caught:
        engine.fork("shape", 2)  # 1 live + 2 > 2: the whole fork is refused up front
    assert caught.value.details["limit"] == "max_machines" and caught.value.retryable
    monkeypatch.setenv("SMOLBOX_MAX_GUEST_MEMORY_MIB", "200")
    with pytest.raises(errors.CapacityExhaustedError):
        engine.create(MachineConfig(**SMALL))
    monkeypatch.delenv("SMOLBOX_MAX_GUEST_MEMORY_MIB")
    with pytest.raises(errors.CapacityExhaustedError) as too_big:
        engine.create(MachineConfig(memory_mib=65536))
    assert too_big.value.details["limit"] in ("host_memory_mib", "max_guest_memory_mib")
    monkeypatch.setenv("SMOLBOX_MAX_VCPUS", "oops")
    with pytest.raises(errors.InvalidConfigError):
        engine.create(MachineConfig(**SMALL))
    assert launcher.plan.calls["spawn"] == spawned
    assert leftovers(engine, launcher, keep={source.id}) == {}
    engine.delete(source.id)
    engine.delete_snapshot("shape")


def test_concurrent_creates_cannot_overshoot_the_machine_cap(
        paths: Paths, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caps are checked in the same transaction as the row insert: of 8 creates racing
    for 3 slots (each in its own engine, as separate processes would be), exactly 3
    win and the others get CAPACITY_EXHAUSTED."""
    monkeypatch.setenv("SMOLBOX_MAX_MACHINES", "3")
    engines = [Engine(paths, launcher=launcher) for _ in range(8)]
    barrier = threading.Barrier(len(engines))
    outcomes: list[object] = []

    def create(eng: Engine) -> None:
        barrier.wait()
        try:
            outcomes.append(eng.create(MachineConfig(**SMALL, from_template=False)))
        except errors.SmolboxError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=create, args=(eng,)) for eng in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        made = [o for o in outcomes if not isinstance(o, errors.SmolboxError)]
        refused = [o for o in outcomes if isinstance(o, errors.CapacityExhaustedError)]
        assert len(made) == 3 and len(refused) == 5, outcomes
        assert len(engines[0].list_machines()) == 3
    finally:
        for eng in engines:
            eng.close()

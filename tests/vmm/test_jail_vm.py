"""Issue 13's acceptance list against real jailed QEMUs (the jail is on by default).

Everything is read back from the kernel (``/proc/<qemu>/``, the cgroup files) or
tried through QMP the way a compromised QEMU could, never from smolbox's own record.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.engine.reconcile import reconcile
from smolbox.host import cgroups
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity
from smolbox.store import MachineRecord
from smolbox.vmm import jail, uids
from smolbox.vmm.qmp import QMPSession

pytestmark = pytest.mark.vm


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def host_cgroups() -> cgroups.CgroupHost:
    host = cgroups.detect()
    assert host is not None, "this host has no usable cgroup hierarchy"
    return host


@pytest.fixture(scope="module")
def clone(engine: Engine) -> Iterator[MachineRecord]:
    record = engine.create(MachineConfig(name="jailed-clone", memory_mib=256, vcpus=1))
    yield record
    engine.delete(record.id, force=True)


@pytest.fixture(scope="module")
def cold(engine: Engine) -> Iterator[MachineRecord]:
    record = engine.create(MachineConfig(name="jailed-cold", from_template=False))
    yield record
    engine.delete(record.id, force=True)


@pytest.mark.parametrize("which", ["clone", "cold"])
def test_qemu_runs_unprivileged_chrooted_in_own_namespaces(
        which: str, request: pytest.FixtureRequest, engine: Engine) -> None:
    record: MachineRecord = request.getfixturevalue(which)
    pid = engine.get(record.id).pid
    assert pid is not None
    status = status_of(pid)
    assert status["Uid"].split()[0] != "0" and set(status["Uid"].split()) == {
        status["Uid"].split()[0]}
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert os.readlink(f"/proc/{pid}/root") == str(engine.layout(record.id).run_dir / "jail")
    for kind in ("pid", "mnt", "ipc", "uts", "net"):  # network none: an empty netns
        assert ns(pid, kind) != ns("self", kind), f"{kind} namespace shared with the host"
    # The recorded identity is the real QEMU (PID 1 of its namespace, seen from here).
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(
        b"qemu-system-x86_64")
    assert status["NSpid"].split()[-1] == "1"
    # And the machine works.
    assert engine.exec(record.id, ["echo", "ok"]).stdout.strip() == "ok"


def test_cgroup_limits_read_back_and_info_shows_them(engine: Engine,
                                                     clone: MachineRecord) -> None:
    host = host_cgroups()
    pid = engine.get(clone.id).pid
    held = cgroups.read_limits(host, clone.id)
    assert held is not None
    assert held.memory_bytes == (256 + jail.VMM_OVERHEAD_MIB) << 20
    assert held.cpu_quota_us == (1 + jail.VMM_CPUS) * cgroups.CPU_PERIOD_US
    assert held.pids_max == jail.PIDS_BASE + 4
    for directory in set(host.group_dirs(clone.id).values()):
        assert str(pid) in (directory / "cgroup.procs").read_text().split()
    info = engine.info(clone.id)
    assert info["jail"]["uid"] == int(status_of(pid)["Uid"].split()[0])  # type: ignore[arg-type]
    assert info["jail"]["cgroup"].startswith(f"smolbox/{clone.id}")
    assert info["jail"]["limits"]["memory_bytes"] == held.memory_bytes


def test_a_compromised_qemu_can_open_no_host_file_and_spawn_nothing(
        engine: Engine, clone: MachineRecord, tmp_path: Path) -> None:
    with QMPSession(engine.layout(clone.id).qmp_socket) as qmp:
        for secret in ("/etc/shadow", "/etc/passwd", str(engine.paths.database)):
            with pytest.raises(errors.QMPError):
                qmp.command("blockdev-add", driver="file", filename=secret,
                            **{"node-name": "stolen", "read-only": True})
        assert qmp.status() == "running"
    assert engine.exec(clone.id, ["true"]).exit_code == 0
    # Spawning: seccomp (spawn=deny) kills the QEMU that tries; nothing runs.
    victim = engine.create(MachineConfig(name="jail-spawn"))
    assert victim.pid is not None and victim.pid_start_time is not None
    marker = tmp_path / "spawned"
    try:
        with pytest.raises((errors.QMPError, errors.VMMError)), \
                QMPSession(engine.layout(victim.id).qmp_socket) as qmp:
            qmp.command("migrate", uri=f"exec:touch {marker}")
        identity = ProcessIdentity(victim.pid, victim.pid_start_time)
        deadline = time.monotonic() + 10
        while identity.is_alive():
            assert time.monotonic() < deadline, "QEMU survived a denied spawn"
            time.sleep(0.05)
        assert not marker.exists()
    finally:
        engine.delete(victim.id, force=True)
    assert engine.exec(clone.id, ["true"]).exit_code == 0


def _shared_ram_fd(pid: int) -> tuple[str, int]:
    """(fd number, inode) of the sealed snapshot-RAM memfd a clone's QEMU holds."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:smolbox-ram"):
                return fd, os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    raise AssertionError(f"QEMU {pid} holds no shared RAM memfd")


def test_clones_share_their_snapshot_ram_and_no_qemu_can_write_it(
        engine: Engine, clone: MachineRecord) -> None:
    peer = engine.create(MachineConfig(name="jail-ram-peer", memory_mib=256, vcpus=1))
    try:
        assert clone.pid is not None and peer.pid is not None
        fd, inode = _shared_ram_fd(clone.pid)
        assert _shared_ram_fd(peer.pid)[1] == inode  # one copy, shared by both clones
        maps = Path(f"/proc/{clone.pid}/maps").read_text()
        assert "/memfd:smolbox-ram" in maps  # guest RAM is mapped from it...
        assert not [line for line in maps.splitlines()  # ...and no snapshot RAM file
                    if "/snapshots/" in line]
        # What a compromised QEMU could try with the fd it holds: every write is refused.
        writable = os.open(f"/proc/{clone.pid}/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(writable, b"evil", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(writable, 0)
        finally:
            os.close(writable)
        assert engine.info(clone.id)["jail"]["ram"].startswith("snapshot RAM shared")
        for record in (clone, peer):
            assert engine.exec(record.id, ["sh", "-c", "echo ok"]).stdout.strip() == "ok"
    finally:
        engine.delete(peer.id, force=True)


def test_a_guest_that_allocates_and_forks_without_bound_stays_in_its_limits(
        engine: Engine, clone: MachineRecord) -> None:
    bystander = engine.create(MachineConfig(name="jail-bystander"))
    try:
        # Allocates and touches pages until the guest OOM killer acts, and a fork bomb
        # capped in time; both inside the guest.
        hog = ("python3 -c \"b=[]\nwhile True: b.append(bytearray(16<<20))\" ; "
               "timeout 10 sh -c ':(){ :|:& };:' ; true")
        with contextlib.suppress(errors.SmolboxError):  # the guest's OOM killer may hit the agent
            engine.exec(clone.id, ["sh", "-c", hog], timeout=90)
        host = host_cgroups()
        limit = (256 + jail.VMM_OVERHEAD_MIB) << 20
        peak = cgroups.peak_memory(host, clone.id)
        assert peak is not None and peak <= limit
        pid = engine.get(clone.id).pid
        assert pid is not None
        rss_kib = int(status_of(pid)["VmRSS"].split()[0])
        assert rss_kib << 10 <= limit
        assert engine.exec(bystander.id, ["echo", "alive"], timeout=60).stdout.strip() == "alive"
    finally:
        engine.delete(bystander.id, force=True)


def leftovers(engine: Engine, vm_ids: set[str]) -> list[str]:
    found: list[str] = []
    host = host_cgroups()
    found += [f"cgroup {n}" for n in cgroups.names(host) & vm_ids]
    settings = JailSettings.from_env()
    found += [f"uid claim {p}" for p, v in uids.claims_of(settings.state_dir,
                                                          engine.paths.run).items()
              if v in vm_ids]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount of {v}" for v in vm_ids if v in mounts]
    found += [f"run dir {v}" for v in vm_ids if engine.layout(v).run_dir.exists()]
    return found


def test_fifty_create_delete_cycles_leave_nothing(engine: Engine) -> None:
    made: set[str] = set()
    for index in range(50):
        record = engine.create(MachineConfig(name=f"cycle-{index}"))
        made.add(record.id)
        engine.delete(record.id, force=True)
    assert leftovers(engine, made) == []


def test_kill9_of_a_jailed_qemu_leaves_nothing_after_reconcile(engine: Engine) -> None:
    record = engine.create(MachineConfig(name="jail-kill9"))
    assert record.pid is not None and record.pid_start_time is not None
    identity = ProcessIdentity(record.pid, record.pid_start_time)
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while identity.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reconcile(engine.store, engine.paths)
    engine.delete(record.id, force=True)
    assert leftovers(engine, {record.id}) == []

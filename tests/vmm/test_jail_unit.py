"""Jail pieces without a VM: cgroup detection, settings, uid claims, backing chains."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host import cgroups
from smolbox.host.checks import check_jail
from smolbox.host.jailhost import JailSettings, UidRange
from smolbox.vmm import jail, uids
from smolbox.vmm.spec import RamBacking, VMSpec, build_argv

V1 = """cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
"""


def test_v1_controllers_are_found_and_an_empty_cgroup2_is_ignored(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(V1)
    host = cgroups.detect(mounts)
    assert host is not None and host.version == 1
    assert host.roots["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert host.group_dirs("m1")["pids"] == Path("/sys/fs/cgroup/pids/smolbox/m1")


def test_a_v2_tree_with_the_controllers_wins(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw 0 0\n")
    host = cgroups.detect(mounts)
    assert host is not None and host.version == 2 and set(host.roots.values()) == {root}


def test_no_controllers_means_no_cgroups(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroups.detect(mounts) is None


def test_settings_default_on_and_reject_bad_values() -> None:
    assert JailSettings.from_env({}).enabled
    assert not JailSettings.from_env({"SMOLBOX_JAIL": "off"}).enabled
    assert JailSettings.from_env({"SMOLBOX_JAIL_UIDS": "5000-5010"}).uids == UidRange(5000, 5010)
    for env in ({"SMOLBOX_JAIL": "maybe"}, {"SMOLBOX_JAIL_UIDS": "0-10"},
                {"SMOLBOX_JAIL_UIDS": "x"}, {"SMOLBOX_JAIL_UIDS": "10-10"}):
        with pytest.raises(errors.InvalidConfigError):
            JailSettings.from_env(env)


def test_doctor_flags_an_opt_out_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLBOX_JAIL", "off")
    lines = check_jail()
    assert lines[0].name == "jail" and lines[0].status == "warn"
    assert "UNCONFINED" in lines[0].detail
    monkeypatch.delenv("SMOLBOX_JAIL")
    names = {c.name for c in check_jail()}
    assert {"jail: uid", "jail: namespace", "jail: chroot", "jail: seccomp",
            "jail: cgroup"} <= names


def test_uid_claims_are_exclusive_and_a_dead_claimer_frees_its_uid(tmp_path: Path) -> None:
    state, run = tmp_path / "claims", tmp_path / "run"
    span = UidRange(7000, 7002)
    first = uids.claim(state, span, vm_id="a", run_root=run)
    second = uids.claim(state, span, vm_id="b", run_root=run)
    assert (first.uid, second.uid) == (7001, 7002)
    with pytest.raises(errors.JailerError) as caught:
        uids.claim(state, span, vm_id="c", run_root=run)
    assert caught.value.details["step"] == "uid"
    # A claim whose claimer died (a kill -9 before spawn) is stale and taken over.
    record = json.loads(first.path.read_text())
    record["owner"] = "999999999-1"
    first.path.write_text(json.dumps(record))
    assert uids.stale(first.path)
    again = uids.claim(state, span, vm_id="c", run_root=run)
    assert again.uid == 7001
    assert set(uids.claims_of(state, run).values()) == {"b", "c"}


def test_a_stale_claim_taken_over_is_never_swept_from_under_its_new_owner(
        tmp_path: Path) -> None:
    """Claimers and sweepers race over the same stale claims: every claim handed out
    must still exist, name its machine and be the only holder of its uid."""
    state, run = tmp_path / "claims", tmp_path / "run"
    span = UidRange(7200, 7240)
    state.mkdir()
    dead = json.dumps({"vm": "gone", "run_root": str(run), "owner": "999999999-1"})
    for uid in range(7201, 7241):
        (state / str(uid)).write_text(dead)
    handed: list[uids.Claim] = []
    lock = threading.Lock()

    def claimer(worker: int) -> None:
        for index in range(4):
            got = uids.claim(state, span, vm_id=f"w{worker}-{index}", run_root=run)
            with lock:
                handed.append(got)

    def sweeper() -> None:
        for _ in range(20):
            for path in list(state.iterdir()):
                if path.name.isdigit():
                    uids.release_if_stale(path)

    threads = [threading.Thread(target=claimer, args=(w,)) for w in range(6)]
    threads += [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({c.uid for c in handed}) == len(handed) == 24
    owners = uids.claims_of(state, run)
    assert sorted(owners[c.path] for c in handed) == sorted(
        f"w{w}-{i}" for w in range(6) for i in range(4))


def test_backing_chain_follows_qcow2_headers(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 1024 * 1024)
    mid, top = tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(mid)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F",
                    "qcow2", str(top)], check=True)
    assert jail.backing_chain(top) == [mid, base]
    assert jail.backing_chain(base) == []


def test_plan_mounts_only_this_machines_files(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    spec = VMSpec(name="m", kernel=tmp_path / "vmlinux", cmdline="", disk=disk,
                  run_dir=tmp_path / "run", ram=RamBacking("file", tmp_path / "ram", False))
    binds, owned, readable = jail.plan_binds(spec)
    sources = {str(b["source"]): b for b in binds}
    assert sources["/usr"]["readonly"] and sources[str(spec.kernel)]["readonly"]
    assert not sources[str(disk)]["readonly"]
    assert "/etc" not in sources and "/root" not in sources and "/home" not in sources
    assert spec.ram.path not in owned  # a clone never owns the template's RAM file
    assert "/dev/kvm" not in sources  # TCG
    argv = build_argv(spec, daemonize=False)
    assert "-daemonize" not in argv and "-pidfile" in argv
    assert os.path.basename(argv[0]) == "qemu-system-x86_64"
    assert readable == [spec.kernel]


def test_a_failing_jail_step_is_typed_and_leaves_nothing(tmp_path: Path) -> None:
    """A kernel that is not there: the bind mount fails inside the new namespace."""
    settings = JailSettings(uids=UidRange(7100, 7110), state_dir=tmp_path / "claims")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    run_dir = tmp_path / "run" / "sbx-jailfail"
    run_dir.mkdir(parents=True)
    spec = VMSpec(name="sbx-jailfail", kernel=tmp_path / "missing-vmlinux", cmdline="",
                  disk=disk, run_dir=run_dir)
    with pytest.raises(errors.JailerError) as caught:
        jail.spawn_jailed(spec, "/usr/bin/qemu-system-x86_64", settings)
    assert caught.value.details["step"] in ("mount", "chroot")
    host = cgroups.detect()
    assert host is None or "sbx-jailfail" not in cgroups.names(host)
    assert [p.name for p in (tmp_path / "claims").iterdir()] == [uids.LOCK]  # no claim
    assert not (run_dir / jail.RECORD).exists() and not (run_dir / jail.JAIL_DIR).exists()
    assert str(run_dir) not in Path("/proc/self/mountinfo").read_text()

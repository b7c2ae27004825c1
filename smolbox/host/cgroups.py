"""Per-machine cgroups with memory, CPU and pids limits, on cgroup v1 or v2.

Why detect at run time: some hosts mount one v1 hierarchy per controller
(``/sys/fs/cgroup/memory``, ``…/cpu``, ``…/pids``) next to an empty cgroup2, others
are pure v2 with every controller in one tree. The mounts are read from
``/proc/self/mounts``; a v2 tree counts only when it offers the controllers. Every
machine gets ``smolbox/<name>`` in each hierarchy it needs, so smolbox's groups are
easy to list (reconcile) and never mixed with the host's own.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolbox import errors

CONTROLLERS = ("memory", "cpu", "pids")
GROUP = "smolbox"
CPU_PERIOD_US = 100_000
_RMDIR_TRIES = 50


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_quota_us: int  # per CPU_PERIOD_US; vcpus x period = that many host CPUs
    pids_max: int


@dataclass(frozen=True)
class CgroupHost:
    """Where this host's controllers live: one v2 root, or one v1 root per controller."""

    version: Literal[1, 2]
    roots: dict[str, Path]  # controller -> hierarchy root (all equal on v2)

    def group_dirs(self, name: str) -> dict[str, Path]:
        return {ctrl: root / GROUP / name for ctrl, root in self.roots.items()}


def detect(mounts: Path = Path("/proc/self/mounts")) -> CgroupHost | None:
    """The hierarchies offering memory, cpu and pids, or None when some is missing."""
    v1: dict[str, Path] = {}
    v2: list[Path] = []
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        where, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            v2.append(where)
        elif fstype == "cgroup":
            for ctrl in CONTROLLERS:
                if ctrl in options:
                    v1.setdefault(ctrl, where)
    for root in v2:
        try:
            offered = (root / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if all(ctrl in offered for ctrl in CONTROLLERS):
            return CgroupHost(2, dict.fromkeys(CONTROLLERS, root))
    if all(ctrl in v1 for ctrl in CONTROLLERS):
        return CgroupHost(1, v1)
    return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise errors.JailerError(f"Cannot write {value.strip()!r} to {path}: {err.strerror}",
                                 step="cgroup") from None


def _enable_v2(root: Path) -> None:
    """v2 hands controllers down level by level: enable them for smolbox/ and below."""
    wanted = " ".join(f"+{ctrl}" for ctrl in CONTROLLERS)
    for level in (root, root / GROUP):
        enabled = (level / "cgroup.subtree_control").read_text().split()
        if not all(ctrl in enabled for ctrl in CONTROLLERS):
            _write(level / "cgroup.subtree_control", wanted)


def create(host: CgroupHost, name: str, limits: Limits) -> list[Path]:
    """Make ``smolbox/<name>`` with ``limits``; returns the ``cgroup.procs`` files to join."""
    dirs = host.group_dirs(name)
    try:
        for directory in set(dirs.values()):
            directory.mkdir(parents=True, exist_ok=True)
        if host.version == 2:
            _enable_v2(host.roots["memory"])
    except OSError as err:
        remove(host, name)
        raise errors.JailerError(f"Cannot create cgroup smolbox/{name}: {err.strerror}",
                                 step="cgroup") from None
    try:
        if host.version == 2:
            group = dirs["memory"]
            _write(group / "memory.max", str(limits.memory_bytes))
            _write(group / "memory.swap.max", "0") if (group / "memory.swap.max").exists() \
                else None
            _write(group / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
            _write(group / "pids.max", str(limits.pids_max))
        else:
            _write(dirs["memory"] / "memory.limit_in_bytes", str(limits.memory_bytes))
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
            _write(dirs["pids"] / "pids.max", str(limits.pids_max))
    except errors.JailerError:
        remove(host, name)
        raise
    return sorted({d / "cgroup.procs" for d in dirs.values()})


def read_limits(host: CgroupHost, name: str) -> Limits | None:
    """The limits as the kernel holds them (None when the group does not exist)."""
    dirs = host.group_dirs(name)
    try:
        if host.version == 2:
            group = dirs["memory"]
            quota = (group / "cpu.max").read_text().split()[0]
            return Limits(int((group / "memory.max").read_text()),
                          -1 if quota == "max" else int(quota),
                          int((group / "pids.max").read_text()))
        return Limits(int((dirs["memory"] / "memory.limit_in_bytes").read_text()),
                      int((dirs["cpu"] / "cpu.cfs_quota_us").read_text()),
                      int((dirs["pids"] / "pids.max").read_text()))
    except (OSError, ValueError):
        return None


def peak_memory(host: CgroupHost, name: str) -> int | None:
    """The most memory the group ever used (v1 ``max_usage_in_bytes``, v2 ``memory.peak``)."""
    group = host.group_dirs(name)["memory"]
    for file in ("memory.max_usage_in_bytes", "memory.peak", "memory.current"):
        try:
            return int((group / file).read_text())
        except (OSError, ValueError):
            continue
    return None


def remove(host: CgroupHost, name: str, *, tries: int = _RMDIR_TRIES) -> bool:
    """Remove ``smolbox/<name>`` everywhere; False when a group still has tasks."""
    gone = True
    for directory in set(host.group_dirs(name).values()):
        for _ in range(tries):
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise errors.JailerError(f"Cannot remove cgroup {directory}: "
                                             f"{err.strerror}", step="cgroup") from None
                time.sleep(0.02)  # the exiting QEMU's last threads are leaving
        else:
            gone = False
    return gone


def age(host: CgroupHost, name: str) -> float:
    """Seconds since ``smolbox/<name>`` was made (0 when it does not exist)."""
    try:
        return time.time() - host.group_dirs(name)["memory"].stat().st_mtime
    except OSError:
        return 0.0


def names(host: CgroupHost) -> set[str]:
    """Every machine group smolbox has on this host."""
    found: set[str] = set()
    for root in set(host.roots.values()):
        with_group = root / GROUP
        if with_group.is_dir():
            found |= {entry.name for entry in with_group.iterdir() if entry.is_dir()}
    return found

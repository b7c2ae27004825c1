"""Bring the store and the host back in line after a crash of anything.

Called at engine start-up by front ends (and by tests). Three kinds of drift:

1. Rows that say a machine runs while its QEMU is gone -> state ``error`` with the
   reason. Identity is pid + start time, so a reused pid never counts as alive.
2. QEMU processes of *this* smolbox home that no row accounts for (a delete that
   crashed half-way) -> killed. They are recognised by their ``-pidfile`` inside our
   run directory, so other smolbox homes on the same host are never touched.
3. Machine and run directories without a row -> removed.

A create in progress in another process has its row inserted before anything
else exists, so it is never mistaken for an orphan.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from smolbox import errors
from smolbox.host.procs import ProcessIdentity
from smolbox.paths import Paths
from smolbox.store import MachineRecord, Store
from smolbox.store.states import ACTIVE_STATES as LIVE_STATES
from smolbox.store.states import MachineState

log = logging.getLogger("smolbox.engine")

STALE_CREATE_SECONDS = 600.0


@dataclass
class ReconcileReport:
    marked_error: list[str] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    network_removed: list[str] = field(default_factory=list)
    pool_removed: list[str] = field(default_factory=list)


def qemu_processes_under(run_root: Path) -> dict[int, str]:
    """pid -> machine id for every QEMU whose pidfile lives under ``run_root``."""
    found: dict[int, str] = {}
    prefix = str(run_root.resolve()) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"qemu-system-x86_64"):
            continue
        args = [a.decode("utf-8", "replace") for a in argv]
        for flag, value in pairwise(args):
            if flag == "-pidfile" and value.startswith(prefix):
                found[int(entry)] = Path(value).parent.name
    return found


def _alive(record: MachineRecord) -> bool:
    if record.pid is None or record.pid_start_time is None:
        return False
    return ProcessIdentity(record.pid, record.pid_start_time).is_alive()


def reconcile(store: Store, paths: Paths) -> ReconcileReport:
    report = ReconcileReport()
    rows = {record.id: record for record in store.list_machines()}

    for record in rows.values():
        if record.state not in LIVE_STATES or _alive(record):
            continue
        if record.state == MachineState.CREATING and record.pid is None:
            if time.time() - record.updated_at < STALE_CREATE_SECONDS:
                continue  # probably being created right now by another process
            reason = "machine creation was interrupted"
        else:
            reason = "QEMU process exited unexpectedly"
        try:
            store.transition(record.id, MachineState.ERROR, error_reason=reason)
            report.marked_error.append(record.id)
        except errors.InvalidTransitionError:
            continue
        shutil.rmtree(paths.run_dir(record.id), ignore_errors=True)

    if paths.run.exists():
        for pid, vm_id in qemu_processes_under(paths.run).items():
            owner = rows.get(vm_id)
            owned = (owner is not None and owner.state in LIVE_STATES
                     and (owner.pid is None or owner.pid == pid))
            if owned:
                continue
            try:
                identity = ProcessIdentity.of(pid)
                identity.signal(signal.SIGKILL)
                report.killed_pids.append(pid)
                log.warning("killed orphaned QEMU %s of machine %s", pid, vm_id)
            except errors.SmolboxError:
                continue

    current = {record.id for record in store.list_machines()}
    for root in (paths.machines, paths.run):
        if not root.exists():
            continue
        for directory in root.iterdir():
            if directory.is_dir() and directory.name not in current:
                shutil.rmtree(directory, ignore_errors=True)
                report.removed_dirs.append(str(directory))
    return report

"""Bring the store and the host back in line after a crash of anything.

Called at engine start-up by front ends (and by tests). First, operations whose
process died (kill -9 of a CLI, an SDK script, the server) are settled. Every
multi-step operation records its intent in the row before it touches the host:
``owner`` (pid + start time of the process doing it) and ``operation``. For a row
whose owner is dead, the documented rule is:

- ``create``: finished if the machine reached ``running``/``stopped`` with its
  VMM alive (or none needed); otherwise undone (VMM killed, files, row removed).
- ``fork:<id>``: all or nothing: every clone of that fork is removed.
- ``template`` (a template builder): removed; so is any builder machine while no
  process holds the template lock (a kill between its create and its marking).
- ``restore``: the VMM is killed and the machine is ``error`` ("restore was
  interrupted"): restore it again, or delete it.
- ``delete``: finished.
- a pending snapshot whose writer is dead: its helper QEMU is killed, its temp and
  final directories and its row are removed (the name is free again), and a source
  machine the save left paused is continued.

Then three kinds of drift:

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

import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from smolbox import errors
from smolbox.engine.snapshotter import BUILDER_LABEL, TEMPLATE_LOCK
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity, owner_alive
from smolbox.paths import Paths
from smolbox.store import MachineRecord, Store
from smolbox.store.states import ACTIVE_STATES as LIVE_STATES
from smolbox.store.states import MachineState
from smolbox.vmm import jail
from smolbox.vmm.handle import QemuHandle

log = logging.getLogger("smolbox.engine")

STALE_CREATE_SECONDS = 600.0


@dataclass
class ReconcileReport:
    undone: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    snapshots_removed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    io_errors: list[str] = field(default_factory=list)
    marked_error: list[str] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    network_removed: list[str] = field(default_factory=list)
    pool_removed: list[str] = field(default_factory=list)
    jail_removed: list[str] = field(default_factory=list)


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


def _kill(pids: Iterable[int], report: ReconcileReport) -> None:
    for pid in pids:
        try:
            ProcessIdentity.of(pid).signal(signal.SIGKILL)
        except errors.SmolboxError:
            continue
        report.killed_pids.append(pid)


def _kill_machine_vmm(record: MachineRecord, paths: Paths, report: ReconcileReport) -> None:
    """The recorded VMM, and any QEMU whose pidfile is in the machine's run dir (one
    spawned just before its pid was recorded)."""
    pids = {pid for pid, vm_id in qemu_processes_under(paths.run).items()
            if vm_id == record.id} if paths.run.exists() else set()
    if _alive(record):
        pids.add(record.pid)  # type: ignore[arg-type]
    _kill(pids, report)


def _clear_run_dir(run_dir: Path) -> None:
    """A run dir and the jail of its QEMU (cgroup, uid claim), whatever state it is in."""
    jail.release(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def _remove_machine(store: Store, record: MachineRecord, paths: Paths) -> None:
    _clear_run_dir(paths.run_dir(record.id))
    shutil.rmtree(paths.machine_dir(record.id), ignore_errors=True)
    current = store.get_machine(record.id)
    if current.state in (MachineState.RUNNING, MachineState.PAUSED):
        store.transition(current.id, MachineState.STOPPED, pid=None, pid_start_time=None)
    if current.state != MachineState.DELETED:
        store.transition(current.id, MachineState.DELETED, pid=None, pid_start_time=None)
    store.delete_machine(current.id)


def _settle_machine(store: Store, paths: Paths, record: MachineRecord,
                    report: ReconcileReport) -> None:
    """One row whose owning operation died (see the rule in the module docstring)."""
    operation = record.operation or ""
    done = (record.state == MachineState.RUNNING and _alive(record)) or (
        record.state == MachineState.STOPPED and record.pid is None)
    if operation in ("create", "restore") and done:
        store.update_machine(record.id, owner=None, operation=None)
        report.finished.append(record.id)
        return
    _kill_machine_vmm(record, paths, report)
    if operation == "restore":
        _clear_run_dir(paths.run_dir(record.id))
        reason = "restore was interrupted: restore it again, or delete it"
        if record.state == MachineState.ERROR:
            store.update_machine(record.id, pid=None, pid_start_time=None, owner=None,
                                 operation=None, error_reason=reason)
        else:
            store.transition(record.id, MachineState.ERROR, pid=None, pid_start_time=None,
                             owner=None, operation=None, error_reason=reason)
        report.marked_error.append(record.id)
        return
    _remove_machine(store, record, paths)
    (report.finished if operation == "delete" else report.undone).append(record.id)


def _template_build_running(paths: Paths) -> bool:
    lock_path = paths.snapshots / TEMPLATE_LOCK
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def _settle_snapshots(store: Store, paths: Paths, report: ReconcileReport) -> None:
    """Pending snapshots of dead writers, and snapshot directories no row accounts for."""
    helpers = qemu_processes_under(paths.snapshots) if paths.snapshots.exists() else {}
    for snap in store.list_pending_snapshots():
        if snap.owner is not None and owner_alive(snap.owner):
            continue
        if snap.owner is None and time.time() - snap.created_at < STALE_CREATE_SECONDS:
            continue  # a writer from before owners were recorded may still run
        temp = paths.snapshots / f".tmp-{snap.id}"
        _kill([pid for pid, directory in helpers.items() if directory == temp.name], report)
        _clear_run_dir(temp)
        shutil.rmtree(snap.path, ignore_errors=True)
        store.delete_snapshot(snap.id)
        report.snapshots_removed.append(snap.name)
        # A source the save left paused is continued by _check_run_states.
    pending = store.list_pending_snapshots()
    known = {Path(s.path).name for s in [*store.list_snapshots(), *pending]}
    known |= {f".tmp-{s.id}" for s in pending}
    if paths.snapshots.exists():
        for directory in paths.snapshots.iterdir():
            if directory.is_dir() and directory.name not in known:
                _kill([p for p, d in helpers.items() if d == directory.name], report)
                _clear_run_dir(directory)
                report.removed_dirs.append(str(directory))


IO_ERROR_REASON = ("guest disk I/O error (is the host disk full?): free space, then "
                   "`smolbox resume` continues it")
ACCIDENTAL_PAUSE = ("paused", "postmigrate")


def _vmm(record: MachineRecord, paths: Paths) -> QemuHandle | None:
    """A handle on the VMM a row records (None when it records none)."""
    if record.pid is None or record.pid_start_time is None:
        return None
    return QemuHandle.attach(ProcessIdentity(record.pid, record.pid_start_time),
                             paths.run_dir(record.id),
                             paths.machine_dir(record.id) / "console.log", record.id)


def _check_run_states(store: Store, paths: Paths, report: ReconcileReport) -> None:
    """Rows say ``running``; QEMU says what is true. Accidental pauses are continued;
    a guest stopped on a disk I/O error (``io-error``: the host disk filled up) is
    reported with its way out, since only freeing space can fix it."""
    for record in store.list_machines({MachineState.RUNNING}):
        vmm = _vmm(record, paths)
        if record.owner is not None or vmm is None or not vmm.is_alive():
            continue
        state = vmm.run_state()
        if state in ACCIDENTAL_PAUSE:
            # The store is the user's intent: a running row whose QEMU is paused was
            # paused by accident (a save whose writer was killed between stop and cont).
            try:
                with vmm.qmp(timeout=5.0) as qmp:
                    qmp.command("cont")
                report.resumed.append(record.id)
            except errors.SmolboxError as err:
                log.warning("could not continue %s: %s", record.id, err)
        elif state == "io-error":
            store.update_machine(record.id, error_reason=IO_ERROR_REASON)
            report.io_errors.append(record.id)
        elif state in ("internal-error", "guest-panicked"):
            _kill_machine_vmm(record, paths, report)
            store.transition(record.id, MachineState.ERROR, pid=None, pid_start_time=None,
                             error_reason=f"QEMU reported {state}")
            report.marked_error.append(record.id)


def settle_dead_operations(store: Store, paths: Paths, report: ReconcileReport) -> None:
    """Finish or undo every operation whose owning process is gone."""
    _settle_snapshots(store, paths, report)
    building = _template_build_running(paths)
    dead_forks: set[str] = set()
    for record in store.list_machines():
        owned_by_dead = record.owner is not None and not owner_alive(record.owner)
        orphan_builder = (not building and record.owner is None
                          and record.config.get("labels", {}).get(BUILDER_LABEL) == "true")
        if owned_by_dead and (record.operation or "").startswith("fork:"):
            dead_forks.add(str(record.operation))
        elif owned_by_dead or orphan_builder:
            _settle_machine(store, paths, record, report)
    for record in store.list_machines():
        if record.operation in dead_forks:  # all of them: even clones that finished
            _kill_machine_vmm(record, paths, report)
            _remove_machine(store, record, paths)
            report.undone.append(record.id)


def reconcile(store: Store, paths: Paths) -> ReconcileReport:
    report = ReconcileReport()
    settle_dead_operations(store, paths, report)
    _check_run_states(store, paths, report)
    rows = {record.id: record for record in store.list_machines()}

    for record in rows.values():
        if record.state not in LIVE_STATES or _alive(record):
            continue
        if record.owner is not None:
            continue  # its operation is still running in a live process
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
        _clear_run_dir(paths.run_dir(record.id))

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
                _clear_run_dir(directory)
                report.removed_dirs.append(str(directory))
    _sweep_jails(store, paths, report)
    return report


def _sweep_jails(store: Store, paths: Paths, report: ReconcileReport) -> None:
    """uid claims and cgroups of this home that no live QEMU holds any more."""
    rows = store.list_machines()
    live = {r.id for r in rows if r.state in LIVE_STATES and _alive(r)}
    # Rows whose operation still runs elsewhere may be between cgroup and spawn.
    known = {r.id for r in rows if r.owner is None or not owner_alive(r.owner)}
    try:
        settings = JailSettings.from_env()
    except errors.SmolboxError:
        return
    report.jail_removed += jail.sweep(paths.run, known, live, settings)

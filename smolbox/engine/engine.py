"""The embedded engine: the lifecycle facade every front door calls.

It owns the order of lifecycle steps and which state each needs: a row is inserted
first (so a crash mid-create is visible to ``reconcile``), then files, then the VMM,
then the agent handshake; any failure unwinds everything it made. The steps
themselves live below it, one room each:

- ``boot.py``: spec -> spawn -> restore -> handshake -> identity, halt, discard;
- ``snapshotter.py``: snapshot, fork, restore, templates;
- ``channels.py``: agent port claims and this process's connection cache;
- ``transfer.py``: guest file transfers (transfer disk or stream);
- ``reconcile.py``: store vs host after crashes;
- ``launcher.py``: the seam to QEMU (a fake one fails at step N in tests).

State transitions all go through ``Store.transition``, which checks the state
machine against the row's current state inside one write transaction; the store is
the source of truth shared by the CLI, the SDK and the REST server. Errors name a
machine the way the user does (its name); the internal id goes in ``details``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from smolbox import errormap, errors, hostfiles
from smolbox.channel import AgentClient
from smolbox.channel.types import ExecEvent, ExecResult
from smolbox.config import MachineConfig
from smolbox.engine import lifetime
from smolbox.engine.admission import admit
from smolbox.engine.boot import Booter, has_agent, new_machine_id
from smolbox.engine.channels import AgentCache
from smolbox.engine.disks import create_overlay
from smolbox.engine.launcher import Launcher, QemuLauncher
from smolbox.engine.layout import MachineLayout
from smolbox.engine.pool import POOL_LABEL, WarmPool
from smolbox.engine.reconcile import ReconcileReport, reconcile
from smolbox.engine.snapshotter import Snapshotter
from smolbox.engine.transfer import read_guest_file, write_guest_file
from smolbox.host.accel import choose_accelerator
from smolbox.host.procs import owner_alive, owner_token
from smolbox.images import ImageCatalog, InstalledImage
from smolbox.network import NetworkManager
from smolbox.paths import Paths
from smolbox.store import MachineRecord, SnapshotRecord, Store
from smolbox.store.states import ACTIVE_STATES as LIVE_STATES
from smolbox.store.states import MachineState, require_state

log = logging.getLogger("smolbox.engine")

#: QEMU run states a machine the store calls ``running`` can be stuck in, and the way out.
STUCK_STATES = {
    "io-error": "The guest's disk write failed (host disk full?): free space on the host, "
                "then `smolbox resume` continues the machine.",
    "paused": "QEMU was paused outside smolbox: `smolbox resume` continues it.",
    "postmigrate": "A snapshot was interrupted: `smolbox resume` continues the machine.",
}


class Engine:
    """Create, run, stop and delete machines on this host (no daemon needed)."""

    def __init__(self, paths: Paths | None = None, *, warm_pool: int = 0,
                 pool_config: MachineConfig | None = None,
                 launcher: Launcher | None = None) -> None:
        """Open the store; nothing on the host is touched (see ``Engine.open``).

        ``warm_pool=K`` keeps K machines of ``pool_config``'s shape ready (see pool.py);
        ``launcher`` replaces QEMU (failure-injection tests only).
        """
        self.paths = paths or Paths.from_env()
        self.paths.ensure()
        self.store = Store.open(self.paths.database)
        self.images = ImageCatalog(self.paths)
        self.network = NetworkManager(self.store, self.paths)
        self.launcher: Launcher = launcher or QemuLauncher()
        self.agents = AgentCache(self.launcher.claim_agent, frozen=self._frozen)
        self.booter = Booter(self.store, self.images, self.network, self.paths,
                             self.launcher, self.agents)
        self.snapshots = Snapshotter(self.booter, self)
        self.startup_report = ReconcileReport()
        self.pool: WarmPool | None = None  # set first: the pool's fill thread reads it
        self.pool = WarmPool(self, warm_pool, pool_config) if warm_pool else None

    @classmethod
    def open(cls, paths: Paths | None = None, *, reconcile: bool = True,
             warm_pool: int = 0, pool_config: MachineConfig | None = None) -> Engine:
        """The engine front doors use: first bring store and host back in line after
        any earlier crash (the report is kept in ``startup_report``), then fill the
        warm pool if one is asked for."""
        engine = cls(paths)
        if reconcile:
            engine.startup_report = engine._startup_reconcile()
            engine.reap_expired()  # lifetimes that ran out while no server watched
        if warm_pool:
            engine.pool = WarmPool(engine, warm_pool, pool_config)
        return engine

    # ------------------------------------------------------------------ lookups
    def get(self, vm: str) -> MachineRecord:
        return self.store.get_machine(vm)

    def list_machines(self, states: set[MachineState] | None = None) -> list[MachineRecord]:
        """Machines that exist (rows being deleted are not listed unless asked for)."""
        wanted = states if states is not None else set(MachineState) - {MachineState.DELETED}
        return self.store.list_machines(wanted)

    def layout(self, vm_id: str) -> MachineLayout:
        return MachineLayout.of(self.paths, vm_id)

    def config_of(self, record: MachineRecord) -> MachineConfig:
        return MachineConfig.model_validate(record.config)

    def info(self, vm: str) -> dict[str, Any]:
        """What a user wants to know about a machine, JSON-ready."""
        record = self.get(vm)
        accel = choose_accelerator()
        info: dict[str, Any] = {
            "id": record.id, "name": record.name, "state": str(record.state),
            "image": record.image_ref, "image_version": record.image_version,
            "accelerator": record.accelerator or accel.name, "pid": record.pid,
            "ip": record.ip, "created_at": record.created_at, "updated_at": record.updated_at,
            "error_reason": record.error_reason, "source_snapshot": record.source_snapshot,
            "config": record.config, "warnings": [], "expires_at": record.expires_at,
        }
        if (record.accelerator or accel.name) == "tcg" and not accel.kvm_usable:
            info["warnings"].append({"code": errors.KVMUnavailableError.code,
                                     "message": accel.reason})
        vmm = self.booter.handle_of(record)
        if vmm is not None and record.state in (MachineState.RUNNING, MachineState.PAUSED):
            info["jail"] = vmm.jail_info()
            if info["jail"] is None:
                info["warnings"].append({
                    "code": "VMM_UNJAILED",
                    "message": "QEMU runs unconfined (as root, host namespaces, no seccomp, "
                               "no limits): SMOLBOX_JAIL=off was set when it started",
                    "help": "Unset SMOLBOX_JAIL and recreate the machine to jail it."})
            status = vmm.run_state()
            info["vmm_status"] = status
            if status in STUCK_STATES and record.state == MachineState.RUNNING:
                info["warnings"].append({
                    "code": "VMM_NOT_RUNNING",
                    "message": f"QEMU reports '{status}' while the machine should run",
                    "help": STUCK_STATES[status]})
        return info

    # ---------------------------------------------------------------- lifecycle
    def create(self, config: MachineConfig | None = None, *, start: bool = True,
               use_pool: bool = True, seed: Path | None = None) -> MachineRecord:
        """A new machine: a template clone when ``config.uses_template``, else booted
        from its image (or left stopped with ``start=False``). All or nothing.

        ``seed`` (hook for images without the agent): a cloud-init seed disk copied
        into the machine and attached read-only on every boot."""
        config = config if config is not None else MachineConfig()
        if (start and use_pool and seed is None and self.pool is not None
                and self.pool.matches(config)):
            pooled = self.pool.take()
            if pooled is not None:
                return self._adopt(pooled, config)
        if config.mounts:
            raise errors.NotSupportedError(
                "Host directory mounts are not implemented yet",
                operation="create", reason="virtiofs mounts are not wired into the engine",
                help="Copy files in with the files API (`smolbox cp`, `machine.files`).",
            )
        self.network.validate(config)
        admit(self.store, config)  # refuse early, before the image is even looked up
        image = self.images.get(config.image)
        vm_id = new_machine_id()
        layout = self.layout(vm_id)
        with self.store.write():  # again with the row: concurrent creates cannot overshoot
            admit(self.store, config)
            self.store.insert_machine(MachineRecord(
                id=vm_id, name=config.name or vm_id, config=config.model_dump(mode="json"),
                image_ref=image.name, image_version=image.version,
                run_dir=str(layout.run_dir), owner=owner_token(), operation="create",
            ))
        try:
            layout.create()
            if seed is not None:
                shutil.copyfile(seed, layout.seed_disk)
                layout.seed_disk.chmod(0o600)
            if start and config.uses_template and has_agent(image):
                template = self.snapshots.template_for(image, config)
                self.store.update_machine(vm_id, source_snapshot=template.name)
                self.booter.from_snapshot(vm_id, config, template, layout)
            else:
                create_overlay(image.rootfs, layout.disk, base_format="raw",
                               size_mib=config.disk_size_mib)
                if start:
                    self.booter.cold_boot(vm_id, config, image, layout)
                else:
                    self.store.transition(vm_id, MachineState.STOPPED)
        except BaseException:
            self.booter.discard(vm_id)
            raise
        expires = None if config.timeout is None else time.time() + config.timeout
        return self.store.update_machine(vm_id, owner=None, operation=None, expires_at=expires)

    def set_timeout(self, vm: str, seconds: float | None) -> MachineRecord:
        """Expire the machine ``seconds`` from now (None: never). Raises
        ``VMNotFoundError``, ``ValidationError``."""
        return lifetime.set_timeout(self.store, vm, seconds)

    def reap_expired(self) -> list[str]:
        """Delete (or pause) every machine past its lifetime; the ids handled."""
        return lifetime.reap_expired(self.store, delete=lambda vm: self.delete(vm, force=True),
                                     pause=self.pause)

    def start(self, vm: str) -> MachineRecord:
        record = self.get(vm)
        self._require(record, {MachineState.STOPPED}, "start")
        image = self.images.get(f"{record.image_ref}:{record.image_version}")
        self.booter.cold_boot(record.id, self.config_of(record), image, self.layout(record.id))
        return self.get(record.id)

    def stop(self, vm: str, *, graceful: bool = True) -> str:
        """Stop via the shutdown ladder; returns the step that stopped QEMU."""
        record = self.get(vm)
        if record.state == MachineState.STOPPED:
            return "already-stopped"
        self._require(record, {MachineState.RUNNING, MachineState.PAUSED, MachineState.ERROR},
                      "stop")
        step = self.booter.halt(record, graceful=graceful)
        self.network.detach(record.id)
        self.store.transition(record.id, MachineState.STOPPED, pid=None, pid_start_time=None)
        return step

    def restart(self, vm: str) -> MachineRecord:
        self.stop(vm)
        return self.start(vm)

    def delete(self, vm: str, *, force: bool = False) -> None:
        """Stop if needed, then remove every file, socket and row of the machine.

        The row records the delete first: if this process dies half-way, reconcile
        finishes it."""
        record = self.store.update_machine(self.get(vm).id, owner=owner_token(),
                                           operation="delete")
        if record.state in LIVE_STATES or record.state == MachineState.ERROR:
            self.booter.halt(record, graceful=not force and record.state == MachineState.RUNNING)
            if record.state != MachineState.ERROR:
                self.store.transition(record.id, MachineState.STOPPED, pid=None,
                                      pid_start_time=None)
        self.network.detach(record.id)
        self.store.transition(record.id, MachineState.DELETED, pid=None, pid_start_time=None)
        self.layout(record.id).remove()
        self.store.delete_machine(record.id)

    def reconcile(self) -> ReconcileReport:
        """Bring store and host back in line after crashes (see engine/reconcile.py)."""
        self.agents.close_all()
        report = reconcile(self.store, self.paths)
        live = {r.id for r in self.store.list_machines(LIVE_STATES)}
        report.network_removed = self.network.reconcile(live)
        for record in self.list_machines():
            owner = record.config.get("labels", {}).get(POOL_LABEL)
            if owner and not owner_alive(owner):
                self.delete(record.id, force=True)
                report.pool_removed.append(record.id)
        return report

    def _startup_reconcile(self) -> ReconcileReport:
        """Crashes of earlier processes must not linger; a failure here is not fatal."""
        try:
            report = self.reconcile()
        except Exception:  # never keep the engine from starting (logged with the cause)
            log.warning("reconcile at engine start failed", exc_info=True)
            return ReconcileReport()
        if report.marked_error or report.killed_pids or report.pool_removed:
            log.warning("reconcile at engine start: %s", report)
        return report

    def logs(self, vm: str, *, follow: bool = False, poll: float = 0.2) -> Iterator[str]:
        """The console log; with ``follow`` keep yielding new output while it runs."""
        record = self.get(vm)
        vmm = self.booter.handle_of(record) if record.state in LIVE_STATES else None
        if vmm is not None:
            vmm.drain_console()
        try:
            existing = self.layout(record.id).console_log.read_text("utf-8", "replace")
        except OSError:
            existing = ""
        if existing:
            yield existing
        while follow and vmm is not None:
            if self.get(record.id).state not in LIVE_STATES:
                return
            fresh = vmm.drain_console()
            if fresh:
                yield fresh
            else:
                time.sleep(poll)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.agents.close_all()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frozen(self, vm_id: str) -> bool:
        """Paused on purpose: silence from its agent is expected, not a sign of a
        dead one (a snapshot's own pause lasts milliseconds, far below the bound)."""
        record = self.store.find_machine(vm_id)
        return record is not None and record.state == MachineState.PAUSED

    def _require(self, record: MachineRecord, allowed: set[MachineState],
                 operation: str) -> None:
        require_state(record.name, record.state, allowed, operation, machine_id=record.id)

    # -------------------------------------------------------------- guest work
    @contextmanager
    def guest(self, vm: str, operation: str) -> Iterator[AgentClient]:
        """The agent of a running machine; a dead VMM becomes ``VMCrashedError``."""
        record = self.get(vm)
        self._require_agent(record)
        self._require(record, {MachineState.RUNNING}, operation)
        if record.error_reason is not None:  # reconcile saw it stuck: fail fast if still so
            self._raise_if_stuck(record)
        try:
            client = self.agents.get(record.id, self.layout(record.id).run_dir)
        except (errors.CommandExecutionUnavailableError, errors.OperationTimeoutError):
            self._raise_if_stuck(record)
            raise
        try:
            yield client
        except errors.CommandExecutionUnavailableError:
            self.agents.forget(record.id)
            crashed = self.booter.crash_of(record)
            if crashed is not None:
                raise crashed from None
            self._raise_if_stuck(record)
            raise

    def _raise_if_stuck(self, record: MachineRecord) -> None:
        """A silent agent on a VMM that QEMU itself stopped is that stop, named: a full
        host disk (``io-error``) is DISK_SPACE_LOW with the free space and the way out."""
        vmm = self.booter.handle_of(record)
        status = vmm.run_state() if vmm is not None else None
        if status not in STUCK_STATES:
            return
        details = {"vm_id": record.name, "id": record.id, "vmm_status": status}
        if status == "io-error":
            where = self.layout(record.id).machine_dir
            raise errors.DiskSpaceError(
                f"Machine '{record.name}' is frozen: QEMU stopped it on a disk I/O error "
                "(the host disk is probably full)", path=str(where),
                free_bytes=errormap.free_bytes(where), details=details,
                help=STUCK_STATES[status])
        raise errors.CommandExecutionUnavailableError(
            record.name, f"QEMU reports '{status}' instead of running",
            STUCK_STATES[status], details=details)

    def exec(self, vm: str, cmd: list[str] | str, **options: Any) -> ExecResult:
        with self.guest(vm, "exec") as agent:
            return agent.exec(cmd, **options)

    def exec_stream(self, vm: str, cmd: list[str] | str, **options: Any) -> Iterator[ExecEvent]:
        with self.guest(vm, "exec") as agent:
            yield from agent.exec_stream(cmd, **options)

    def _require_agent(self, record: MachineRecord) -> None:
        """Hook for images without the agent (``image pull``): say so, and how to reach
        the machine instead, rather than waiting for an agent that never answers."""
        try:
            image = self.images.find(f"{record.image_ref}:{record.image_version}")
        except errors.ImageError:
            image = None  # the agent answers, or not, as before
        if image is not None and image.build.get("agent") is False:
            raise errors.CommandExecutionUnavailableError(
                record.name, f"image {image.ref} has no smolbox agent",
                remediation="Reach it over SSH: declare `ssh` and a port forward to 22 in "
                            "a VMFile, or use smolbox.ssh.SSHClient with its keys.",
                details={"id": record.id})

    def pause(self, vm: str) -> MachineRecord:
        """Freeze the guest's vCPUs (QMP ``stop``); memory and processes stay."""
        record = self.get(vm)
        self._require(record, {MachineState.RUNNING}, "pause")
        with self.booter.require_vmm(record, "pause").qmp() as qmp:
            qmp.command("stop")
        return self.store.transition(record.id, MachineState.PAUSED,
                                     expect={MachineState.RUNNING})

    def resume(self, vm: str) -> MachineRecord:
        """Continue a paused guest and set its clock from the host (it lost the pause).

        Also continues a ``running`` machine whose QEMU stopped by itself, e.g. on a
        disk I/O error once the host disk had filled up (free space first)."""
        record = self.get(vm)
        stuck = self.booter.handle_of(record) if record.state == MachineState.RUNNING else None
        if stuck is not None and stuck.run_state() in STUCK_STATES:
            with stuck.qmp() as qmp:
                qmp.command("cont")
            record = self.store.update_machine(record.id, error_reason=None)
            with self.guest(record.id, "resume") as agent:
                agent.sync_time()
            return record
        self._require(record, {MachineState.PAUSED}, "resume")
        with self.booter.require_vmm(record, "resume").qmp() as qmp:
            qmp.command("cont")
        record = self.store.transition(record.id, MachineState.RUNNING,
                                       expect={MachineState.PAUSED})
        with self.guest(record.id, "resume") as agent:
            agent.sync_time()
        return record

    # ------------------------------------------------------- snapshots (see snapshotter)
    def list_snapshots(self, vm: str | None = None) -> list[SnapshotRecord]:
        vm_id = self.get(vm).id if vm is not None else None
        return self.store.list_snapshots(vm_id)

    def get_snapshot(self, name: str) -> SnapshotRecord:
        return self.store.get_snapshot(name)

    def delete_snapshot(self, name: str) -> None:
        self.snapshots.delete_snapshot(name)

    def snapshot(self, vm: str, name: str, *, template: bool = False) -> SnapshotRecord:
        record = self.get(vm)
        return self.snapshots.snapshot(record, self.config_of(record), name, template=template)

    def fork(self, snapshot: str, count: int = 1, *, names: list[str] | None = None,
             env: dict[str, str] | None = None) -> list[MachineRecord]:
        return self.snapshots.fork(snapshot, count, names=names, env=env)

    def restore(self, vm: str, snapshot: str) -> MachineRecord:
        return self.snapshots.restore(self.get(vm), snapshot)

    def template_for(self, image: InstalledImage, config: MachineConfig) -> SnapshotRecord:
        return self.snapshots.template_for(image, config)

    def _adopt(self, pooled: MachineRecord, config: MachineConfig) -> MachineRecord:
        """Turn a pool machine into the requested one: name, config, identity, env."""
        if config.name is not None and config.name != pooled.name:
            try:
                self.store.rename_machine(pooled.id, config.name)
            except errors.VMAlreadyExistsError:
                self.delete(pooled.id, force=True)  # out of the pool: never leave it behind
                raise
        self.store.update_machine(pooled.id, config=config.model_dump(mode="json"))
        record = self.get(pooled.id)
        try:
            with self.guest(record.id, "adopt") as agent:
                agent.set_identity(hostname=record.name, machine_id=uuid.uuid4().hex,
                                   entropy=os.urandom(64), time_ns=time.time_ns())
                if config.env:
                    agent.set_env(config.env)
        except errors.SmolboxError:
            self.delete(record.id, force=True)
            return self.create(config, use_pool=False)
        if config.timeout is not None:
            return self.store.update_machine(record.id, expires_at=time.time() + config.timeout)
        return self.get(record.id)

    def remove_image(self, ref: str) -> list[str]:
        """Remove an image (``NAME`` = every version) unless machines or snapshots use it.

        Its templates are internal and go first, when no machine builds on them.
        """
        name, _, version = ref.partition(":")
        versions = {m.version for m in self.images.list() if m.name == name
                    and (not version or m.version == version)}

        def uses(image: str | None, image_version: str | None) -> bool:
            return image == name and (image_version in versions if versions else True)

        for snap in self.store.list_snapshots():
            if snap.manifest.get("template") and uses(snap.manifest.get("image"),
                                                      snap.manifest.get("image_version")):
                with suppress(errors.ConflictError):
                    self.delete_snapshot(snap.id)
        machines = [r.name for r in self.list_machines() if uses(r.image_ref, r.image_version)]
        snapshots = [s.name for s in self.store.list_snapshots()
                     if uses(s.manifest.get("image"), s.manifest.get("image_version"))]
        if machines or snapshots:
            raise errors.ConflictError(
                f"Image '{ref}' is still in use", details={"machines": machines,
                                                           "snapshots": snapshots},
                help="Their disks are overlays over the image: delete those machines and "
                     "snapshots first.",
            )
        return self.images.remove(ref)

    # -------------------------------------------------------------------- files
    def write_file(self, vm: str, path: str, data: bytes | BinaryIO, *,
                   mode: int = 0o644) -> str:
        """Write a guest file atomically; returns the path taken (see transfer.py)."""
        with self.guest(vm, "write_file") as agent:
            return write_guest_file(agent, self.layout(self.get(vm).id).xfer_disk, path, data,
                                    mode=mode)

    def read_file_stream(self, vm: str, path: str) -> Iterator[bytes]:
        """A guest file in chunks (through the transfer disk when it is free)."""
        with self.guest(vm, "read_file") as agent:
            yield from read_guest_file(agent, self.layout(self.get(vm).id).xfer_disk, path)

    def read_file(self, vm: str, path: str) -> bytes:
        return b"".join(self.read_file_stream(vm, path))

    def download(self, vm: str, guest_path: str, host_path: str | Path) -> None:
        """Copy a guest file to the host; the host file appears complete or not at all."""
        hostfiles.write_atomically(self.read_file_stream(vm, guest_path), host_path,
                                   guest_path)

    def upload(self, vm: str, host_path: str | Path, guest_path: str, *,
               mode: int | None = None) -> str:
        """Copy a host file into the guest (streamed; the host mode unless ``mode``)."""
        with hostfiles.open_source(host_path, mode) as (handle, chosen):
            return self.write_file(vm, guest_path, handle, mode=chosen)

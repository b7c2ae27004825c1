"""The embedded engine: the one place machine lifecycles happen.

It owns the order of operations and the cleanup when any of them fails: a row is
inserted first (so a crash mid-create is visible to ``reconcile``), then files,
then the QEMU process, then the agent handshake; any failure unwinds everything it
made, so a failed ``create`` leaves no process, file, socket or row behind.

State transitions all go through ``Store.transition``, which checks the state
machine against the row's current state inside one write transaction; the store
is the source of truth shared by the CLI, the SDK and the REST server.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from smolbox import errors
from smolbox.channel import AgentClient
from smolbox.channel.types import ExecEvent, ExecResult
from smolbox.config import MACHINE_ID_PATTERN, MachineConfig
from smolbox.engine import console
from smolbox.engine.channels import AgentLease, claim_agent
from smolbox.engine.disks import create_overlay
from smolbox.engine.layout import MachineLayout
from smolbox.engine.pool import POOL_LABEL, WarmPool, owner_alive
from smolbox.engine.reconcile import ReconcileReport, reconcile
from smolbox.engine.snapshots import SnapshotFiles, copy_file, file_entries, verify
from smolbox.engine.states import ACTIVE_STATES as LIVE_STATES
from smolbox.engine.states import MachineState, require_state
from smolbox.engine.transfer import (
    MIN_FAST_BYTES,
    create_xfer_disk,
    download_chunks,
    upload_via_disk,
)
from smolbox.host.accel import choose_accelerator, tsc_khz
from smolbox.host.procs import ProcessIdentity
from smolbox.images import ImageCatalog, InstalledImage
from smolbox.network import NetworkAttachment, NetworkManager
from smolbox.paths import Paths
from smolbox.store import MachineRecord, SnapshotRecord, Store
from smolbox.vmm.migration import load_state, save_state
from smolbox.vmm.process import read_tail, spawn
from smolbox.vmm.qmp import QMPSession
from smolbox.vmm.shutdown import stop_process
from smolbox.vmm.spec import RamBacking, VMSpec, has_power_button

log = logging.getLogger("smolbox.engine")

# Guest kernel arguments the engine relies on: reboot/panic end QEMU (-no-reboot),
# trust_cpu avoids a 1 s getrandom() stall, quiet keeps the console ring for the user.
ENGINE_CMDLINE = "quiet panic=-1 reboot=t random.trust_cpu=on"
AGENT_ATTEMPT_SECONDS = 1.0


def new_machine_id() -> str:
    return f"sbx-{secrets.token_hex(4)}"


def guest_cmdline(image: InstalledImage) -> str:
    parts = [image.cmdline, ENGINE_CMDLINE]
    khz = tsc_khz()
    if khz:
        parts.append(f"tsc_early_khz={khz}")
    return " ".join(parts)


def _remaining(source: BinaryIO) -> int | None:
    """Bytes left in a seekable source (None when it cannot tell, e.g. a pipe)."""
    try:
        if not source.seekable():
            return None
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
        return end - here
    except (OSError, ValueError):
        return None


def template_name(image: InstalledImage, config: MachineConfig) -> str:
    raw = f"template-{image.name}-{image.version[:16]}-{config.memory_mib}m-{config.vcpus}c"
    return re.sub(r"[^a-z0-9-]", "-", raw.lower())[:63]


class Engine:
    """Create, run, stop and delete machines on this host (no daemon needed)."""

    def __init__(self, paths: Paths | None = None, *, warm_pool: int = 0,
                 pool_config: MachineConfig | None = None, reconcile: bool = True) -> None:
        """Open the store and, unless told not to, reconcile it with the host first.

        ``warm_pool=K`` keeps K machines of ``pool_config``'s shape ready (see pool.py).
        """
        self.paths = paths or Paths.from_env()
        self.paths.ensure()
        self.store = Store.open(self.paths.database)
        self.images = ImageCatalog(self.paths)
        self.network = NetworkManager(self.store, self.paths)
        self._agents: dict[str, AgentLease] = {}
        self._agents_lock = threading.Lock()
        self.startup_report = self._startup_reconcile() if reconcile else ReconcileReport()
        self.pool = WarmPool(self, warm_pool, pool_config) if warm_pool else None

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
            "config": record.config, "warnings": [],
        }
        if (record.accelerator or accel.name) == "tcg" and not accel.kvm_usable:
            info["warnings"].append({"code": errors.KVMUnavailableError.code,
                                     "message": accel.reason})
        return info

    # ---------------------------------------------------------------- lifecycle
    def create(self, config: MachineConfig | Mapping[str, Any] | None = None, *,
               start: bool = True, use_pool: bool = True) -> MachineRecord:
        """A new machine booted from its image (or left stopped with ``start=False``)."""
        if config is None:
            config = MachineConfig()
        elif not isinstance(config, MachineConfig):
            config = MachineConfig.model_validate(dict(config))
        if start and use_pool and self.pool is not None and self.pool.matches(config):
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
        image = self.images.get(config.image)
        vm_id = new_machine_id()
        layout = self.layout(vm_id)
        self.store.insert_machine(MachineRecord(
            id=vm_id, name=config.name or vm_id, config=config.model_dump(mode="json"),
            image_ref=image.name, image_version=image.version, run_dir=str(layout.run_dir),
        ))
        try:
            layout.create()
            if start and self.uses_template(config):
                template = self.template_for(image, config)
                self.store.update_machine(vm_id, source_snapshot=template.name)
                self._boot_from_snapshot(vm_id, config, template, layout)
            else:
                create_overlay(image.rootfs, layout.disk, base_format="raw",
                               size_mib=config.disk_size_mib)
                if start:
                    self._cold_boot(vm_id, config, image, layout)
                else:
                    self.store.transition(vm_id, MachineState.STOPPED)
        except BaseException:
            self._discard(vm_id, layout)
            raise
        return self.get(vm_id)

    def start(self, vm: str) -> MachineRecord:
        record = self.get(vm)
        require_state(record.id, record.state, {MachineState.STOPPED}, "start")
        config = self.config_of(record)
        image = self.images.get(f"{record.image_ref}:{record.image_version}")
        self._cold_boot(record.id, config, image, self.layout(record.id))
        return self.get(record.id)

    def stop(self, vm: str, *, graceful: bool = True) -> str:
        """Stop via the shutdown ladder; returns the step that stopped QEMU."""
        record = self.get(vm)
        if record.state == MachineState.STOPPED:
            return "already-stopped"
        require_state(record.id, record.state,
                      {MachineState.RUNNING, MachineState.PAUSED, MachineState.ERROR}, "stop")
        step = self._halt(record, graceful=graceful)
        self.network.detach(record.id)
        self.store.transition(record.id, MachineState.STOPPED, pid=None, pid_start_time=None)
        return step

    def restart(self, vm: str) -> MachineRecord:
        self.stop(vm)
        return self.start(vm)

    def delete(self, vm: str, *, force: bool = False) -> None:
        """Stop if needed, then remove every file, socket and row of the machine."""
        record = self.get(vm)
        if record.state in LIVE_STATES or record.state == MachineState.ERROR:
            self._halt(record, graceful=not force and record.state == MachineState.RUNNING)
            if record.state != MachineState.ERROR:
                self.store.transition(record.id, MachineState.STOPPED, pid=None,
                                      pid_start_time=None)
        self.network.detach(record.id)
        self.store.transition(record.id, MachineState.DELETED, pid=None, pid_start_time=None)
        self.layout(record.id).remove()
        self.store.delete_machine(record.id)

    def reconcile(self) -> ReconcileReport:
        """Bring store and host back in line after crashes (see engine/reconcile.py)."""
        with self._agents_lock:
            for lease in self._agents.values():
                lease.close()
            self._agents.clear()
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
        layout = self.layout(record.id)
        if record.state in LIVE_STATES:
            console.drain(layout.qmp_socket, layout.console_log)
        try:
            existing = layout.console_log.read_text("utf-8", "replace")
        except OSError:
            existing = ""
        if existing:
            yield existing
        while follow:
            current = self.get(record.id)
            if current.state not in LIVE_STATES:
                return
            fresh = console.drain(layout.qmp_socket, layout.console_log)
            if fresh:
                yield fresh
            else:
                time.sleep(poll)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        with self._agents_lock:
            for lease in self._agents.values():
                lease.close()
            self._agents.clear()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- guest work
    @contextmanager
    def guest(self, vm: str, operation: str) -> Iterator[AgentClient]:
        """The agent of a running machine; a dead VMM becomes ``VMCrashedError``."""
        record = self.get(vm)
        require_state(record.id, record.state, {MachineState.RUNNING}, operation)
        client = self._agent_for(record)
        try:
            yield client
        except errors.CommandExecutionUnavailableError:
            self._forget_agent(record.id)
            crashed = self._crash_of(record)
            if crashed is not None:
                raise crashed from None
            raise

    def exec(self, vm: str, cmd: list[str] | str, **options: Any) -> ExecResult:
        with self.guest(vm, "exec") as agent:
            return agent.exec(cmd, **options)

    def exec_stream(self, vm: str, cmd: list[str] | str, **options: Any) -> Iterator[ExecEvent]:
        with self.guest(vm, "exec") as agent:
            yield from agent.exec_stream(cmd, **options)

    # ------------------------------------------------------- pause and resume
    def pause(self, vm: str) -> MachineRecord:
        """Freeze the guest's vCPUs (QMP ``stop``); memory and processes stay."""
        record = self.get(vm)
        require_state(record.id, record.state, {MachineState.RUNNING}, "pause")
        with QMPSession(self.layout(record.id).qmp_socket) as qmp:
            qmp.command("stop")
        return self.store.transition(record.id, MachineState.PAUSED,
                                     expect={MachineState.RUNNING})

    def resume(self, vm: str) -> MachineRecord:
        """Continue a paused guest and set its clock from the host (it lost the pause)."""
        record = self.get(vm)
        require_state(record.id, record.state, {MachineState.PAUSED}, "resume")
        with QMPSession(self.layout(record.id).qmp_socket) as qmp:
            qmp.command("cont")
        record = self.store.transition(record.id, MachineState.RUNNING,
                                       expect={MachineState.PAUSED})
        with self.guest(record.id, "resume") as agent:
            agent.sync_time()
        return record

    # --------------------------------------------------------------- snapshots
    def list_snapshots(self, vm: str | None = None) -> list[SnapshotRecord]:
        vm_id = self.get(vm).id if vm is not None else None
        return self.store.list_snapshots(vm_id)

    def get_snapshot(self, name: str) -> SnapshotRecord:
        return self.store.get_snapshot(name)

    def delete_snapshot(self, name: str) -> None:
        """Remove a snapshot, unless a machine's or another snapshot's disk builds on it."""
        snap = self.store.get_snapshot(name)
        machines = [r.name for r in self.list_machines() if r.source_snapshot == snap.name]
        children = [s.name for s in self.store.list_snapshots()
                    if s.manifest.get("disk_parent") == snap.name]
        if machines or children:
            raise errors.ConflictError(
                f"Snapshot '{snap.name}' is still in use",
                details={"machines": machines, "snapshots": children},
                help="Their disks are overlays over this snapshot's disk: delete those "
                     "machines and snapshots first.",
            )
        record = self.store.delete_snapshot(snap.id)
        shutil.rmtree(record.path, ignore_errors=True)

    def snapshot(self, vm: str, name: str, *, template: bool = False) -> SnapshotRecord:
        """RAM + device state + disk of a running or paused machine, written atomically.

        The machine is paused for the save (tens of ms for 256 MiB) and continues
        afterwards. The saved stream is then turned into a shared RAM file by a
        throwaway paused QEMU (see ``_normalize``), so clones map RAM instead of
        copying it.
        """
        record = self.get(vm)
        config = self.config_of(record)
        if config.mounts:
            raise errors.NotSupportedError(
                f"Machine '{record.name}' has a host directory mount and cannot be snapshotted",
                operation="snapshot",
                reason="virtiofs (vhost-user-fs) devices cannot be migrated by QEMU",
                help="Create the machine without mounts, and copy files in with the files API.",
            )
        if config.network.mode != "none":
            raise errors.NotSupportedError(
                f"Machine '{record.name}' has a network device and cannot be snapshotted yet",
                operation="snapshot",
                reason="clones are restored without a NIC, so the device state would not load",
                help="Snapshot a machine with network mode 'none'; give clones network access "
                     "by creating networked machines instead.",
            )
        require_state(record.id, record.state, {MachineState.RUNNING, MachineState.PAUSED},
                      "snapshot")
        if not re.match(MACHINE_ID_PATTERN, name):
            raise errors.ValidationError(
                f"Snapshot name {name!r} must match {MACHINE_ID_PATTERN}", field="name", value=name)
        snapshot_id = f"snap-{secrets.token_hex(4)}"
        final = self.paths.snapshots / snapshot_id
        files = SnapshotFiles(self.paths.snapshots / f".tmp-{snapshot_id}")
        self.store.insert_snapshot(SnapshotRecord(
            id=snapshot_id, name=name, path=str(final), created_at=0.0, vm_id=record.id))
        try:
            files.root.mkdir(mode=0o700, parents=True)
            layout = self.layout(record.id)
            was_running = record.state == MachineState.RUNNING
            with QMPSession(layout.qmp_socket, timeout=60.0) as qmp:
                if was_running:
                    qmp.command("stop")
                try:
                    save_state(qmp, files.stream, ignore_shared=False)
                    # After the save QEMU has flushed and released the disk: copy it now.
                    copy_file(layout.disk, files.disk)
                finally:
                    if was_running:
                        qmp.command("cont")
            image = self.images.get(f"{record.image_ref}:{record.image_version}")
            self._normalize(record.id, config, image, files)
            entries = file_entries(files)
            manifest: dict[str, Any] = {
                "name": name, "source_vm": record.id, "template": template,
                "image": image.name, "image_version": image.version,
                "kernel": str(image.kernel), "cmdline": guest_cmdline(image),
                "memory_mib": config.memory_mib, "vcpus": config.vcpus,
                "accelerator": choose_accelerator().name,
                "config": config.model_dump(mode="json"), "files": entries,
                # The copied disk is an overlay over this snapshot's disk (or the image).
                "disk_parent": record.source_snapshot,
                "created_at": time.time(),
            }
            files.manifest_path.write_text(json.dumps(manifest, indent=2))
            os.rename(files.root, final)
        except BaseException:
            shutil.rmtree(files.root, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            self.store.delete_snapshot(snapshot_id)
            raise
        size = sum(int(entry["size"]) for entry in entries.values())
        return self.store.complete_snapshot(snapshot_id, size=size, manifest=manifest)

    def fork(self, snapshot: str, count: int = 1, *, names: list[str] | None = None,
             env: dict[str, str] | None = None) -> list[MachineRecord]:
        """``count`` new machines from one snapshot, each with its own disk overlay and
        its RAM mapped copy-on-write from the snapshot's RAM file. All or nothing."""
        if not 1 <= count <= 64:
            raise errors.ValidationError("count must be between 1 and 64", field="count",
                                         value=count)
        if names is not None and len(names) != count:
            raise errors.ValidationError("names must have one entry per clone", field="names",
                                         value=names)
        snap = self.store.get_snapshot(snapshot)
        base = dict(snap.manifest["config"])
        if env:
            base["env"] = {**base.get("env", {}), **env}
        configs = [MachineConfig.model_validate({**base, "name": names[i] if names else None})
                   for i in range(count)]
        with ThreadPoolExecutor(max_workers=min(count, 8)) as pool:
            outcomes = list(pool.map(lambda c: self._clone_or_error(snap, c), configs))
        made = [o for o in outcomes if isinstance(o, MachineRecord)]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            for record in made:
                self.delete(record.id, force=True)
            raise failures[0]
        return made

    def restore(self, vm: str, snapshot: str) -> MachineRecord:
        """Put an existing machine back to a snapshot's RAM, devices and disk."""
        record = self.get(vm)
        snap = self.store.get_snapshot(snapshot)
        if record.state in (MachineState.RUNNING, MachineState.PAUSED, MachineState.ERROR):
            self._halt(record, graceful=False)
            self.store.transition(record.id, MachineState.STOPPED, pid=None,
                                  pid_start_time=None)
        require_state(record.id, self.get(record.id).state, {MachineState.STOPPED}, "restore")
        config = MachineConfig.model_validate({**snap.manifest["config"], "name": record.name})
        self.store.update_machine(record.id, config=config.model_dump(mode="json"),
                                  source_snapshot=snap.name)
        self._boot_from_snapshot(record.id, config, snap, self.layout(record.id))
        return self.get(record.id)

    def template_for(self, image: InstalledImage, config: MachineConfig) -> SnapshotRecord:
        """The template snapshot for (image version, memory, vcpus), made on first use.

        Made once per image version: boot a machine, wait for the agent, snapshot it,
        delete it. A file lock keeps concurrent creators (other processes too) from
        building it twice; templates of older versions of the image are removed.
        """
        name = template_name(image, config)
        try:
            return self.store.get_snapshot(name)
        except errors.SnapshotNotFoundError:
            pass
        self.paths.snapshots.mkdir(parents=True, exist_ok=True)
        with open(self.paths.snapshots / ".template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self.store.get_snapshot(name)
            except errors.SnapshotNotFoundError:
                pass
            builder = self.create(MachineConfig(
                image=f"{image.name}:{image.version}", memory_mib=config.memory_mib,
                vcpus=config.vcpus, from_template=False, timeouts=config.timeouts,
                labels={"smolbox/template": "true"}))
            try:
                made = self.snapshot(builder.id, name, template=True)
            finally:
                self.delete(builder.id, force=True)
            for old in self.store.list_snapshots():
                if (old.manifest.get("template") and old.manifest.get("image") == image.name
                        and old.manifest.get("image_version") != image.version):
                    # Machines of the old version keep it alive until they are gone.
                    with suppress(errors.ConflictError):
                        self.delete_snapshot(old.id)
            return made

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

    def uses_template(self, config: MachineConfig) -> bool:
        """Whether ``config`` can start from a template (and so from the warm pool):
        machines with a NIC or mounts have devices the template does not have."""
        return config.from_template and config.network.mode == "none" and not config.mounts

    def _clone_or_error(self, snap: SnapshotRecord,
                        config: MachineConfig) -> MachineRecord | BaseException:
        try:
            return self._clone(snap, config)
        except BaseException as err:
            return err

    def _clone(self, snap: SnapshotRecord, config: MachineConfig) -> MachineRecord:
        vm_id = new_machine_id()
        layout = self.layout(vm_id)
        self.store.insert_machine(MachineRecord(
            id=vm_id, name=config.name or vm_id, config=config.model_dump(mode="json"),
            image_ref=snap.manifest["image"], image_version=snap.manifest["image_version"],
            run_dir=str(layout.run_dir), source_snapshot=snap.name,
        ))
        try:
            layout.create()
            self._boot_from_snapshot(vm_id, config, snap, layout)
        except BaseException:
            self._discard(vm_id, layout)
            raise
        return self.get(vm_id)

    def _boot_from_snapshot(self, vm_id: str, config: MachineConfig, snap: SnapshotRecord,
                            layout: MachineLayout) -> None:
        files = SnapshotFiles(Path(snap.path))
        manifest = snap.manifest
        verify(files, manifest)
        accel = choose_accelerator()
        if manifest.get("accelerator") not in (None, accel.name):
            raise errors.NotSupportedError(
                f"Snapshot '{snap.name}' was taken under {manifest['accelerator']}, "
                f"this host runs {accel.name}", operation="restore",
                reason="device state differs between accelerators")
        image = self.images.get(f"{manifest['image']}:{manifest['image_version']}")
        layout.disk.unlink(missing_ok=True)
        create_overlay(files.disk, layout.disk, base_format="qcow2",
                       size_mib=config.disk_size_mib)
        spec = VMSpec(
            name=vm_id, kernel=image.kernel, cmdline=str(manifest["cmdline"]),
            disk=layout.disk, run_dir=layout.run_dir, machine=image.machine,
            initrd=image.initrd, memory_mib=int(manifest["memory_mib"]),
            vcpus=int(manifest["vcpus"]), accel_args=tuple(accel.qemu_args),
            ram=RamBacking("file", files.ram, share=False), incoming=True,
            xfer_disk=layout.xfer_disk,
        )
        self._boot(vm_id, config, spec, layout,
                   restore=lambda qmp: load_state(qmp, files.state, ignore_shared=True))

    def _normalize(self, vm_id: str, config: MachineConfig, image: InstalledImage,
                   files: SnapshotFiles) -> None:
        """Turn the saved stream (state + all RAM) into ``ram`` + a tiny ``state``.

        A paused QEMU with its RAM in ``files.ram`` (shared) loads the stream and
        saves again with ``x-ignore-shared``: whatever RAM the source had (anonymous,
        or a private clone mapping), the snapshot ends up as a plain RAM file.
        Its sockets live in the snapshot's temp dir so reconcile can find it.
        """
        scratch = files.root / "scratch.qcow2"
        spec = VMSpec(
            name=f"snapshot-{vm_id}", kernel=image.kernel, cmdline=guest_cmdline(image),
            disk=scratch, run_dir=files.root, machine=image.machine, initrd=image.initrd,
            memory_mib=config.memory_mib,
            vcpus=config.vcpus, accel_args=tuple(choose_accelerator().qemu_args),
            ram=RamBacking("file", files.ram, share=True), incoming=True,
            xfer_disk=files.root / "xfer.img",
        )
        try:
            create_overlay(files.disk, scratch, base_format="qcow2")
            create_xfer_disk(files.root / "xfer.img")
            identity = spawn(spec)
            try:
                with QMPSession(spec.qmp_socket, timeout=60.0) as qmp:
                    load_state(qmp, files.stream, ignore_shared=False)
                    save_state(qmp, files.state, ignore_shared=True)
            finally:
                stop_process(identity, spec.qmp_socket, vm_id=spec.name, graceful=False)
        finally:
            for leftover in (scratch, files.stream, spec.qmp_socket, *spec.agent_sockets,
                             spec.pidfile, spec.stderr_log, files.root / "xfer.img"):
                leftover.unlink(missing_ok=True)

    def write_file(self, vm: str, path: str, data: bytes | BinaryIO, *,
                   mode: int = 0o644) -> str:
        """Write a guest file atomically; returns the path taken: ``"transfer-disk"``
        for large files when the disk is free, else ``"stream"`` (virtio-serial)."""
        source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        size = len(data) if isinstance(data, bytes | bytearray) else _remaining(source)
        with self.guest(vm, "write_file") as agent:
            if size is None or size >= MIN_FAST_BYTES:
                start = source.tell() if source.seekable() else None
                if upload_via_disk(agent, self.layout(self.get(vm).id).xfer_disk, source,
                                   path, mode=mode):
                    return "transfer-disk"
                if start is not None:
                    source.seek(start)
            agent.write_file(path, source, mode=mode)
            return "stream"

    def read_file_stream(self, vm: str, path: str) -> Iterator[bytes]:
        """A guest file in chunks (through the transfer disk when it is free)."""
        with self.guest(vm, "read_file") as agent:
            chunks = download_chunks(agent, self.layout(self.get(vm).id).xfer_disk, path)
            yield from (chunks if chunks is not None else agent.read_file_stream(path))

    def read_file(self, vm: str, path: str) -> bytes:
        return b"".join(self.read_file_stream(vm, path))

    def download(self, vm: str, guest_path: str, host_path: str | Path) -> None:
        """Copy a guest file to the host, streamed; the host file appears complete or
        not at all."""
        target = Path(host_path)
        part = target.with_name(f".{target.name}.smolbox-part")
        try:
            with open(part, "wb") as sink:
                for chunk in self.read_file_stream(vm, guest_path):
                    sink.write(chunk)
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise errors.ValidationError(f"Cannot write {host_path}: {exc.strerror}",
                                         field="host_path", value=str(host_path)) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def upload(self, vm: str, host_path: str | Path, guest_path: str, *,
               mode: int | None = None) -> str:
        """Copy a host file into the guest (streamed; the host mode unless ``mode``)."""
        try:
            handle = open(host_path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise errors.ValidationError(f"Cannot read {host_path}: {exc.strerror}",
                                         field="host_path", value=str(host_path)) from None
        with handle:
            chosen = mode if mode is not None else os.fstat(handle.fileno()).st_mode & 0o7777
            return self.write_file(vm, guest_path, handle, mode=chosen)

    # ------------------------------------------------------------------ inside
    def _spec(self, vm_id: str, config: MachineConfig, image: InstalledImage,
              layout: MachineLayout, network: NetworkAttachment | None = None) -> VMSpec:
        accel = choose_accelerator()
        return VMSpec(
            name=vm_id, kernel=image.kernel, cmdline=guest_cmdline(image), disk=layout.disk,
            run_dir=layout.run_dir, machine=image.machine, initrd=image.initrd,
            memory_mib=config.memory_mib, vcpus=config.vcpus,
            accel_args=tuple(accel.qemu_args), xfer_disk=layout.xfer_disk,
            extra_args=network.qemu_args if network is not None else (),
        )

    def _cold_boot(self, vm_id: str, config: MachineConfig, image: InstalledImage,
                   layout: MachineLayout) -> None:
        """Boot from the disk with the machine's network attached (released on failure)."""
        attachment = self.network.attach(vm_id, config)
        if attachment.ip is not None:
            self.store.update_machine(vm_id, ip=attachment.ip)
        try:
            self._boot(vm_id, config, self._spec(vm_id, config, image, layout, attachment),
                       layout, guest_commands=attachment.guest_commands)
        except BaseException:
            self.network.detach(vm_id)
            raise

    def _boot(self, vm_id: str, config: MachineConfig, spec: VMSpec, layout: MachineLayout,
              *, restore: Callable[[QMPSession], None] | None = None,
              guest_commands: tuple[tuple[str, ...], ...] = ()) -> None:
        """Spawn QEMU, optionally load a snapshot, handshake, set identity; all or nothing."""
        layout.create()
        if spec.xfer_disk is not None:
            create_xfer_disk(spec.xfer_disk)
        identity = spawn(spec)
        self.store.update_machine(vm_id, pid=identity.pid, pid_start_time=identity.start_time,
                                  accelerator=choose_accelerator().name)
        lease: AgentLease | None = None
        try:
            if restore is not None:
                with QMPSession(spec.qmp_socket, timeout=60.0) as qmp:
                    restore(qmp)
                    qmp.command("cont")
            lease = self._wait_for_agent(vm_id, spec, identity, config.timeouts.boot, layout)
            agent = lease.client
            name = self.get(vm_id).name
            agent.set_identity(hostname=name, machine_id=uuid.uuid4().hex,
                               entropy=os.urandom(64), time_ns=time.time_ns())
            if config.env:
                agent.set_env(config.env)
            for command in guest_commands:
                done = agent.exec(list(command), timeout=30)
                if not done.success:
                    raise errors.NetworkSetupError(
                        f"Configuring the guest network failed: {' '.join(command)}",
                        step="configure guest",
                        details={"stderr": done.stderr, "exit_code": done.exit_code})
        except BaseException:
            if lease is not None:
                lease.close()
            stop_process(identity, spec.qmp_socket, vm_id=vm_id, graceful=False)
            layout.clear_run_dir()
            raise
        with self._agents_lock:
            self._agents[vm_id] = lease
        self.store.transition(vm_id, MachineState.RUNNING, error_reason=None)

    def _wait_for_agent(self, vm_id: str, spec: VMSpec, identity: ProcessIdentity,
                        timeout: float, layout: MachineLayout) -> AgentLease:
        """Handshake with the agent, failing fast if QEMU dies while the guest boots."""
        deadline = time.monotonic() + timeout
        while True:
            if not identity.is_alive():
                raise errors.VMCrashedError(
                    vm_id, "QEMU exited while the guest was booting",
                    details={"stderr": read_tail(spec.stderr_log),
                             "console_tail": console.tail(layout.console_log)},
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                console.drain(spec.qmp_socket, layout.console_log)
                raise errors.OperationTimeoutError(
                    "boot", timeout,
                    message=f"Machine '{vm_id}' did not finish booting within {timeout:g} s",
                    details={"console_tail": console.tail(layout.console_log)},
                    help="Raise timeouts.boot, or read the console tail for a guest error.",
                )
            try:
                return claim_agent(spec.run_dir, vm_id=vm_id,
                                   timeout=min(AGENT_ATTEMPT_SECONDS, remaining))
            except (errors.OperationTimeoutError, errors.CommandExecutionUnavailableError):
                continue

    def _agent_for(self, record: MachineRecord) -> AgentClient:
        """This process's agent connection to the machine (one claimed port, reused)."""
        with self._agents_lock:
            lease = self._agents.get(record.id)
            if lease is not None and lease.client.connected:
                return lease.client
            self._agents.pop(record.id, None)
        if lease is not None:
            lease.close()
        lease = claim_agent(self.layout(record.id).run_dir, vm_id=record.id, timeout=10.0)
        with self._agents_lock:
            raced = self._agents.get(record.id)
            if raced is None:
                self._agents[record.id] = lease
        if raced is not None:  # another thread connected meanwhile: use theirs
            lease.close()
            return raced.client
        return lease.client

    def _forget_agent(self, vm_id: str) -> None:
        with self._agents_lock:
            lease = self._agents.pop(vm_id, None)
        if lease is not None:
            lease.close()

    def _identity(self, record: MachineRecord) -> ProcessIdentity | None:
        if record.pid is None or record.pid_start_time is None:
            return None
        return ProcessIdentity(record.pid, record.pid_start_time)

    def _crash_of(self, record: MachineRecord) -> errors.VMCrashedError | None:
        """If the VMM is gone, record the machine as ``error`` and describe the crash."""
        identity = self._identity(record)
        if identity is not None and identity.is_alive():
            return None
        layout = self.layout(record.id)
        reason = "QEMU process exited unexpectedly"
        # Someone else may already have moved it on (e.g. a concurrent delete).
        with suppress(errors.InvalidTransitionError):
            self.store.transition(record.id, MachineState.ERROR, error_reason=reason)
        layout.clear_run_dir()
        return errors.VMCrashedError(
            record.id, reason, details={"console_tail": console.tail(layout.console_log)},
        )

    def _halt(self, record: MachineRecord, *, graceful: bool) -> str:
        """Stop the QEMU process of ``record`` (if any) and clear its run dir."""
        layout = self.layout(record.id)
        identity = self._identity(record)
        step = "already-stopped"
        if identity is not None and identity.is_alive():
            qmp_socket = layout.qmp_socket
            console.drain(qmp_socket, layout.console_log)

            def agent_shutdown() -> None:
                self._agent_for(record).shutdown()

            try:
                step = stop_process(
                    identity, qmp_socket, vm_id=record.id,
                    agent_shutdown=agent_shutdown if graceful else None,
                    has_power_button=self._has_power_button(record),
                    graceful=graceful,
                )
            finally:
                self._forget_agent(record.id)
        else:
            self._forget_agent(record.id)
        layout.clear_run_dir()
        return step

    def _has_power_button(self, record: MachineRecord) -> bool:
        try:
            image = self.images.get(f"{record.image_ref}:{record.image_version}")
        except errors.ImageError:
            return False
        return has_power_button(image.machine)

    def _discard(self, vm_id: str, layout: MachineLayout) -> None:
        """Undo a failed create completely: process, network, files and row."""
        self._forget_agent(vm_id)
        record = self.store.find_machine(vm_id)
        if record is not None:
            identity = self._identity(record)
            if identity is not None and identity.is_alive():
                stop_process(identity, layout.qmp_socket, vm_id=vm_id,
                             graceful=False)
        self.network.detach(vm_id)
        layout.remove()
        if record is not None:
            try:
                self.store.transition(vm_id, MachineState.DELETED)
            except errors.InvalidTransitionError:
                self.store.transition(vm_id, MachineState.ERROR)
                self.store.transition(vm_id, MachineState.DELETED)
            self.store.delete_machine(vm_id)

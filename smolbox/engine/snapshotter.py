"""Snapshots as operations: take one, fork clones from it, restore a machine to it,
and the templates that make every plain create a clone.

Why apart from the facade: these are the multi-step operations with the most ways
to fail half-way (a save interrupted, one clone of eight failing, a template build
racing another process), and each has its own rollback. The files a snapshot is
made of, and their integrity, are ``snapshots.py``'s business (persistence);
restoring a VMM is ``boot.py``'s. Lifecycle calls the snapshotter needs (create a
builder machine, delete clones) go through the small ``MachineOps`` protocol.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from smolbox import errors
from smolbox.config import MACHINE_ID_PATTERN, MachineConfig
from smolbox.engine.admission import admit
from smolbox.engine.boot import Booter, guest_cmdline, new_machine_id
from smolbox.engine.disks import create_overlay
from smolbox.engine.ops import MachineOps
from smolbox.engine.snapshots import SnapshotFiles, copy_file, file_entries
from smolbox.engine.transfer import create_xfer_disk
from smolbox.host.accel import choose_accelerator
from smolbox.host.procs import owner_token
from smolbox.images import InstalledImage
from smolbox.store import MachineRecord, SnapshotRecord
from smolbox.store.states import MachineState, require_state
from smolbox.vmm.spec import RamBacking, VMSpec

MAX_FORK = 64
BUILDER_LABEL = "smolbox/template"
TEMPLATE_LOCK = ".template.lock"  # in the snapshots dir
FORK_WORKERS = 8


def template_name(image: InstalledImage, config: MachineConfig) -> str:
    raw = f"template-{image.name}-{image.version[:16]}-{config.memory_mib}m-{config.vcpus}c"
    return re.sub(r"[^a-z0-9-]", "-", raw.lower())[:63]


@dataclass
class Snapshotter:
    booter: Booter
    machines: MachineOps

    # ---------------------------------------------------------------- queries
    def delete_snapshot(self, name: str) -> None:
        """Remove a snapshot, unless a machine's or another snapshot's disk builds on it."""
        store = self.booter.store
        snap = store.get_snapshot(name)
        machines = [r.name for r in store.list_machines(set(MachineState) - {MachineState.DELETED})
                    if r.source_snapshot == snap.name]
        children = [s.name for s in store.list_snapshots()
                    if s.manifest.get("disk_parent") == snap.name]
        if machines or children:
            raise errors.ConflictError(
                f"Snapshot '{snap.name}' is still in use",
                details={"machines": machines, "snapshots": children},
                help="Their disks are overlays over this snapshot's disk: delete those "
                     "machines and snapshots first.",
            )
        record = store.delete_snapshot(snap.id)
        shutil.rmtree(record.path, ignore_errors=True)

    # ------------------------------------------------------------------- take
    def snapshot(self, record: MachineRecord, config: MachineConfig, name: str, *,
                 template: bool = False) -> SnapshotRecord:
        """RAM + device state + disk of a running or paused machine, written atomically.

        The machine is paused for the save (tens of ms for 256 MiB) and continues
        afterwards. The saved stream is then turned into a shared RAM file by a
        throwaway paused QEMU (see ``_normalize``), so clones map RAM instead of
        copying it.
        """
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
        require_state(record.name, record.state, {MachineState.RUNNING, MachineState.PAUSED},
                      "snapshot", machine_id=record.id)
        if not re.match(MACHINE_ID_PATTERN, name):
            raise errors.ValidationError(
                f"Snapshot name {name!r} must match {MACHINE_ID_PATTERN}", field="name", value=name)
        store = self.booter.store
        snapshot_id = f"snap-{secrets.token_hex(4)}"
        final = self.booter.paths.snapshots / snapshot_id
        files = SnapshotFiles(self.booter.paths.snapshots / f".tmp-{snapshot_id}")
        store.insert_snapshot(SnapshotRecord(
            id=snapshot_id, name=name, path=str(final), created_at=0.0, vm_id=record.id,
            owner=owner_token()))
        try:
            files.root.mkdir(mode=0o700, parents=True)
            layout = self.booter.layout(record.id)
            vmm = self.booter.require_vmm(record, "snapshot")
            was_running = record.state == MachineState.RUNNING
            if was_running:
                with vmm.qmp() as qmp:
                    qmp.command("stop")
            try:
                vmm.save_state(files.stream, ignore_shared=False)
                # After the save QEMU has flushed and released the disk: copy it now.
                copy_file(layout.disk, files.disk)
            finally:
                if was_running:
                    with vmm.qmp() as qmp:
                        qmp.command("cont")
            image = self.booter.images.get(f"{record.image_ref}:{record.image_version}")
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
            store.delete_snapshot(snapshot_id)
            raise
        size = sum(int(entry["size"]) for entry in entries.values())
        return store.complete_snapshot(snapshot_id, size=size, manifest=manifest)

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
            vmm = self.booter.launcher.spawn(spec, files.root / "console.log")
            try:
                vmm.load_state(files.stream, ignore_shared=False)
                vmm.save_state(files.state, ignore_shared=True)
            finally:
                vmm.stop(graceful=False)
        finally:
            for leftover in (scratch, files.stream, spec.qmp_socket, *spec.agent_sockets,
                             spec.pidfile, spec.stderr_log, files.root / "xfer.img",
                             files.root / "console.log"):
                leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ clone
    def fork(self, snapshot: str, count: int = 1, *, names: list[str] | None = None,
             env: dict[str, str] | None = None) -> list[MachineRecord]:
        """``count`` new machines from one snapshot, each with its own disk overlay and
        its RAM mapped copy-on-write from the snapshot's RAM file. All or nothing."""
        if not 1 <= count <= MAX_FORK:
            raise errors.ValidationError(f"count must be between 1 and {MAX_FORK}",
                                         field="count", value=count)
        if names is not None and len(names) != count:
            raise errors.ValidationError("names must have one entry per clone", field="names",
                                         value=names)
        snap = self.booter.store.get_snapshot(snapshot)
        base = dict(snap.manifest["config"])
        if env:
            base["env"] = {**base.get("env", {}), **env}
        configs = [MachineConfig.model_validate({**base, "name": names[i] if names else None})
                   for i in range(count)]
        # Every clone carries this operation until all are up, so a fork whose process
        # dies half-way is undone as a whole by reconcile. Admission and all rows are
        # one transaction: two concurrent forks cannot both pass the caps.
        operation = f"fork:{secrets.token_hex(4)}"
        with self.booter.store.write():
            admit(self.booter.store, configs[0], count)
            ids = [self._clone_row(snap, config, operation) for config in configs]
        with ThreadPoolExecutor(max_workers=min(count, FORK_WORKERS)) as pool:
            outcomes = list(pool.map(lambda pair: self._boot_clone_or_error(snap, *pair),
                                     zip(configs, ids, strict=True)))
        made = [o for o in outcomes if isinstance(o, MachineRecord)]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            for record in made:
                self.machines.delete(record.id, force=True)
            raise failures[0]
        store = self.booter.store
        return [store.update_machine(r.id, owner=None, operation=None) for r in made]

    def _boot_clone_or_error(self, snap: SnapshotRecord, config: MachineConfig,
                             vm_id: str) -> MachineRecord | BaseException:
        try:
            return self._boot_clone(snap, config, vm_id)
        except BaseException as err:
            return err

    def _clone_row(self, snap: SnapshotRecord, config: MachineConfig, operation: str) -> str:
        """The new clone's row (first, so a crash is visible), owned by ``operation``
        until the caller clears it."""
        vm_id = new_machine_id()
        self.booter.store.insert_machine(MachineRecord(
            id=vm_id, name=config.name or vm_id, config=config.model_dump(mode="json"),
            image_ref=snap.manifest["image"], image_version=snap.manifest["image_version"],
            run_dir=str(self.booter.layout(vm_id).run_dir), source_snapshot=snap.name,
            owner=owner_token(), operation=operation,
        ))
        return vm_id

    def _boot_clone(self, snap: SnapshotRecord, config: MachineConfig,
                    vm_id: str) -> MachineRecord:
        """Restore ``snap`` into the clone whose row ``_clone_row`` made."""
        layout = self.booter.layout(vm_id)
        try:
            layout.create()
            self.booter.from_snapshot(vm_id, config, snap, layout)
        except BaseException:
            self.booter.discard(vm_id)
            raise
        return self.booter.store.get_machine(vm_id)

    def restore(self, record: MachineRecord, snapshot: str) -> MachineRecord:
        """Put an existing machine back to a snapshot's RAM, devices and disk."""
        store = self.booter.store
        snap = store.get_snapshot(snapshot)
        record = store.update_machine(record.id, owner=owner_token(), operation="restore")
        if record.state in (MachineState.RUNNING, MachineState.PAUSED, MachineState.ERROR):
            self.booter.halt(record, graceful=False)
            store.transition(record.id, MachineState.STOPPED, pid=None, pid_start_time=None)
        require_state(record.name, store.get_machine(record.id).state, {MachineState.STOPPED},
                      "restore", machine_id=record.id)
        config = MachineConfig.model_validate({**snap.manifest["config"], "name": record.name})
        store.update_machine(record.id, config=config.model_dump(mode="json"),
                             source_snapshot=snap.name)
        self.booter.from_snapshot(record.id, config, snap, self.booter.layout(record.id))
        return store.update_machine(record.id, owner=None, operation=None)

    # -------------------------------------------------------------- templates
    def template_for(self, image: InstalledImage, config: MachineConfig) -> SnapshotRecord:
        """The template snapshot for (image version, memory, vcpus), made on first use.

        Made once per image version: boot a machine, wait for the agent, snapshot it,
        delete it. A file lock keeps concurrent creators (other processes too) from
        building it twice; templates of older versions of the image are removed.
        """
        store = self.booter.store
        name = template_name(image, config)
        with suppress(errors.SnapshotNotFoundError):
            return store.get_snapshot(name)
        snapshots_dir = self.booter.paths.snapshots
        snapshots_dir.mkdir(parents=True, exist_ok=True)
        with open(snapshots_dir / TEMPLATE_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with suppress(errors.SnapshotNotFoundError):
                return store.get_snapshot(name)
            builder = self.machines.create(MachineConfig(
                image=f"{image.name}:{image.version}", memory_mib=config.memory_mib,
                vcpus=config.vcpus, from_template=False, timeouts=config.timeouts,
                labels={BUILDER_LABEL: "true"}))
            # Held until deleted below; reconcile removes builders nobody builds with
            # (the template lock is free), whatever point a killed build reached.
            builder = store.update_machine(builder.id, owner=owner_token(),
                                           operation="template")
            try:
                made = self.snapshot(builder, MachineConfig.model_validate(builder.config),
                                     name, template=True)
            finally:
                self.machines.delete(builder.id, force=True)
            for old in store.list_snapshots():
                if (old.manifest.get("template") and old.manifest.get("image") == image.name
                        and old.manifest.get("image_version") != image.version):
                    # Machines of the old version keep it alive until they are gone.
                    with suppress(errors.ConflictError):
                        self.delete_snapshot(old.id)
            return made

"""Bringing a machine's VMM up and down: spec -> spawn -> restore -> handshake -> identity.

Why one module: booting is where the engine and the vmm layer talk back and forth
(spawn, record the pid, load a snapshot, wait for the agent while watching QEMU,
set the guest's identity, configure its network) and where every failure must
unwind exactly what was made. Keeping that conversation here leaves the facade
(``engine.py``) with the order of lifecycle steps only. The VMM is reached through a
``Launcher`` (the failure-injection seam) and the handles it returns.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.channels import AgentCache, AgentLease
from smolbox.engine.disks import create_overlay
from smolbox.engine.launcher import Launcher
from smolbox.engine.layout import MachineLayout
from smolbox.engine.snapshots import SnapshotFiles, verify
from smolbox.engine.transfer import create_xfer_disk
from smolbox.host.accel import choose_accelerator, tsc_khz
from smolbox.host.procs import ProcessIdentity
from smolbox.images import ImageCatalog, InstalledImage
from smolbox.network import NetworkAttachment, NetworkManager
from smolbox.paths import Paths
from smolbox.store import MachineRecord, SnapshotRecord, Store
from smolbox.store.states import MachineState
from smolbox.vmm.handle import VMMHandle
from smolbox.vmm.spec import RamBacking, VMSpec, has_power_button

# Guest kernel arguments the engine relies on: reboot/panic end QEMU (-no-reboot),
# trust_cpu avoids a 1 s getrandom() stall, quiet keeps the console ring for the user.
ENGINE_CMDLINE = "quiet panic=-1 reboot=t random.trust_cpu=on"
AGENT_ATTEMPT_SECONDS = 1.0
GUEST_SETUP_TIMEOUT = 30.0

Restore = Callable[[VMMHandle], None]


def new_machine_id() -> str:
    return f"sbx-{secrets.token_hex(4)}"


def has_agent(image: InstalledImage) -> bool:
    """Hook for foreign images (``image pull``): their manifest says ``agent: false``;
    they boot without the agent handshake and are reached over SSH instead."""
    return image.manifest.build.get("agent") is not False


def seed_args(layout: MachineLayout) -> tuple[str, ...]:
    """Hook: the machine's cloud-init seed as a read-only virtio disk, when it has one."""
    if not layout.seed_disk.is_file():
        return ()
    return ("-drive", f"id=seed,file={layout.seed_disk},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=seed")


def guest_cmdline(image: InstalledImage) -> str:
    parts = [image.cmdline, ENGINE_CMDLINE]
    khz = tsc_khz()
    if khz:
        parts.append(f"tsc_early_khz={khz}")
    return " ".join(parts)


@dataclass
class Booter:
    """Starts, stops and discards the VMM side of machines recorded in ``store``."""

    store: Store
    images: ImageCatalog
    network: NetworkManager
    paths: Paths
    launcher: Launcher
    agents: AgentCache

    def layout(self, vm_id: str) -> MachineLayout:
        return MachineLayout.of(self.paths, vm_id)

    # ------------------------------------------------------------------ up
    def spec(self, vm_id: str, config: MachineConfig, image: InstalledImage,
             layout: MachineLayout, network: NetworkAttachment | None = None) -> VMSpec:
        accel = choose_accelerator()
        return VMSpec(
            name=vm_id, kernel=image.kernel, cmdline=guest_cmdline(image), disk=layout.disk,
            run_dir=layout.run_dir, machine=image.machine, initrd=image.initrd,
            memory_mib=config.memory_mib, vcpus=config.vcpus,
            accel_args=tuple(accel.qemu_args), xfer_disk=layout.xfer_disk,
            extra_args=(*(network.qemu_args if network is not None else ()),
                        *seed_args(layout)),
        )

    def cold_boot(self, vm_id: str, config: MachineConfig, image: InstalledImage,
                  layout: MachineLayout) -> None:
        """Boot from the disk with the machine's network attached (released on failure)."""
        attachment = self.network.attach(vm_id, config)
        if attachment.ip is not None:
            self.store.update_machine(vm_id, ip=attachment.ip)
        try:
            self.boot(vm_id, config, self.spec(vm_id, config, image, layout, attachment),
                      layout, guest_commands=attachment.guest_commands,
                      with_agent=has_agent(image))
        except BaseException:
            self.network.detach(vm_id)
            raise

    def from_snapshot(self, vm_id: str, config: MachineConfig, snap: SnapshotRecord,
                      layout: MachineLayout) -> None:
        """Restore ``snap`` into a new QEMU: a thin disk overlay over the snapshot's
        disk, its RAM file mapped copy-on-write, its device state loaded."""
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
        self.boot(vm_id, config, spec, layout,
                  restore=lambda vmm: vmm.load_state(files.state, ignore_shared=True))

    def boot(self, vm_id: str, config: MachineConfig, spec: VMSpec, layout: MachineLayout,
             *, restore: Restore | None = None,
             guest_commands: tuple[tuple[str, ...], ...] = (), with_agent: bool = True) -> None:
        """Spawn, optionally restore, handshake, set identity; all or nothing.

        ``with_agent=False`` (an image without the agent): running once QEMU runs the guest;
        the guest configures itself (cloud-init) and is reached over SSH."""
        layout.create()
        if spec.xfer_disk is not None:
            create_xfer_disk(spec.xfer_disk)
        vmm = self.launcher.spawn(spec, layout.console_log)
        self.store.update_machine(vm_id, pid=vmm.identity.pid,
                                  pid_start_time=vmm.identity.start_time,
                                  accelerator=choose_accelerator().name)
        lease: AgentLease | None = None
        name = self.store.get_machine(vm_id).name
        try:
            if restore is not None:
                restore(vmm)
                with vmm.qmp() as qmp:
                    qmp.command("cont")
            if not with_agent:
                if not vmm.is_alive():
                    raise errors.VMCrashedError(
                        name, "QEMU exited while the guest was booting",
                        details={"id": vm_id, "stderr": vmm.stderr_tail()})
                self.store.transition(vm_id, MachineState.RUNNING, error_reason=None)
                return
            lease = self.wait_for_agent(vm_id, name, vmm, layout, config.timeouts.boot)
            agent = lease.client
            agent.set_identity(hostname=name, machine_id=uuid.uuid4().hex,
                               entropy=os.urandom(64), time_ns=time.time_ns())
            if config.env:
                agent.set_env(config.env)
            for command in guest_commands:
                done = agent.exec(list(command), timeout=GUEST_SETUP_TIMEOUT)
                if not done.success:
                    raise errors.NetworkSetupError(
                        f"Configuring the guest network failed: {' '.join(command)}",
                        step="configure guest",
                        details={"stderr": done.stderr, "exit_code": done.exit_code})
        except BaseException:
            if lease is not None:
                lease.close()
            vmm.stop(graceful=False)
            layout.clear_run_dir()
            raise
        self.agents.put(vm_id, lease)
        self.store.transition(vm_id, MachineState.RUNNING, error_reason=None)

    def wait_for_agent(self, vm_id: str, name: str, vmm: VMMHandle, layout: MachineLayout,
                       timeout: float) -> AgentLease:
        """Handshake with the agent, failing fast if QEMU dies while the guest boots."""
        deadline = time.monotonic() + timeout
        while True:
            if not vmm.is_alive():
                raise errors.VMCrashedError(
                    name, "QEMU exited while the guest was booting",
                    details={"id": vm_id, "stderr": vmm.stderr_tail(),
                             "console_tail": vmm.console_tail()},
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                vmm.drain_console()
                raise errors.OperationTimeoutError(
                    "boot", timeout,
                    message=f"Machine '{name}' did not finish booting within {timeout:g} s",
                    details={"id": vm_id, "console_tail": vmm.console_tail()},
                    help="Raise timeouts.boot, or read the console tail for a guest error.",
                )
            try:
                return self.launcher.claim_agent(layout.run_dir, vm_id=vm_id,
                                                 timeout=min(AGENT_ATTEMPT_SECONDS, remaining))
            except (errors.OperationTimeoutError, errors.CommandExecutionUnavailableError):
                continue

    # ---------------------------------------------------------------- down
    def handle_of(self, record: MachineRecord) -> VMMHandle | None:
        """The VMM a row records, or None when it has no process."""
        if record.pid is None or record.pid_start_time is None:
            return None
        layout = self.layout(record.id)
        return self.launcher.attach(ProcessIdentity(record.pid, record.pid_start_time),
                                    layout.run_dir, layout.console_log, record.id)

    def require_vmm(self, record: MachineRecord, operation: str) -> VMMHandle:
        vmm = self.handle_of(record)
        if vmm is None:
            raise errors.InvalidTransitionError(
                record.name, record.state.value, operation,
                message=f"Machine '{record.name}' has no running VMM for {operation}",
                details={"id": record.id})
        return vmm

    def crash_of(self, record: MachineRecord) -> errors.VMCrashedError | None:
        """If the VMM is gone, record the machine as ``error`` and describe the crash."""
        vmm = self.handle_of(record)
        if vmm is not None and vmm.is_alive():
            return None
        reason = "QEMU process exited unexpectedly"
        # Someone else may already have moved it on (e.g. a concurrent delete).
        with suppress(errors.InvalidTransitionError):
            self.store.transition(record.id, MachineState.ERROR, error_reason=reason)
        layout = self.layout(record.id)
        layout.clear_run_dir()
        return errors.VMCrashedError(
            record.name, reason,
            details={"id": record.id, "console_tail": vmm.console_tail() if vmm else ""},
        )

    def halt(self, record: MachineRecord, *, graceful: bool) -> str:
        """Stop the VMM of ``record`` (if any) and clear its run dir; returns the step."""
        layout = self.layout(record.id)
        vmm = self.handle_of(record)
        step = "already-stopped"
        try:
            if vmm is not None and vmm.is_alive():
                vmm.drain_console()

                def agent_shutdown() -> None:
                    self.agents.get(record.id, layout.run_dir).shutdown()

                step = vmm.stop(graceful=graceful, agent_shutdown=agent_shutdown,
                                has_power_button=self._has_power_button(record))
        finally:
            self.agents.forget(record.id)
        layout.clear_run_dir()
        return step

    def discard(self, vm_id: str) -> None:
        """Undo a failed create completely: process, network, files and row."""
        self.agents.forget(vm_id)
        record = self.store.find_machine(vm_id)
        if record is not None:
            vmm = self.handle_of(record)
            if vmm is not None and vmm.is_alive():
                vmm.stop(graceful=False)
        self.network.detach(vm_id)
        self.layout(vm_id).remove()
        if record is not None:
            try:
                self.store.transition(vm_id, MachineState.DELETED)
            except errors.InvalidTransitionError:
                self.store.transition(vm_id, MachineState.ERROR)
                self.store.transition(vm_id, MachineState.DELETED)
            self.store.delete_machine(vm_id)

    def _has_power_button(self, record: MachineRecord) -> bool:
        try:
            image = self.images.get(f"{record.image_ref}:{record.image_version}")
        except errors.ImageError:
            return False
        return has_power_button(image.machine)

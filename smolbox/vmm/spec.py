"""A pure description of one QEMU microvm and its command line.

Why pure: the argv is the contract with QEMU, so it is built in one function that
tests can read without spawning anything, and the engine, templates and clones all
go through it (only the RAM backing and ``incoming`` differ between them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

AGENT_PORT_NAME = "org.smolbox.agent"
# Several ports so several host processes (a server, the CLI, an SDK script) can each
# hold an agent connection to the same machine: QEMU serves one client per socket.
AGENT_PORTS = 4
CONSOLE_CHARDEV = "console"
CONSOLE_RING_BYTES = 1 << 20  # the console is a bounded ring: a chatty guest cannot fill the disk
ROOT_DRIVE_ID = "root"
QMP_SOCKET = "qmp.sock"  # in the run dir
XFER_DRIVE_ID = "xfer"
XFER_SERIAL = "smolbox-xfer"  # the guest finds the transfer disk by this serial


@dataclass(frozen=True)
class RamBacking:
    """How guest RAM is backed.

    ``anonymous``: ordinary private memory (cold-booted machines).
    ``file`` + ``share=True``: RAM lives in a file that a snapshot can keep as-is
    (templates); ``file`` + ``share=False``: the file is mapped copy-on-write and
    never modified (clones of a snapshot share its pages).
    """

    kind: Literal["anonymous", "file"] = "anonymous"
    path: Path | None = None
    share: bool = False


@dataclass(frozen=True)
class VMSpec:
    """Everything needed to start one QEMU process for a machine."""

    name: str
    kernel: Path
    cmdline: str
    disk: Path
    run_dir: Path
    machine: str = "microvm,acpi=off,rtc=on"
    initrd: Path | None = None
    memory_mib: int = 256
    vcpus: int = 1
    accel_args: tuple[str, ...] = ("-accel", "tcg", "-cpu", "max")
    ram: RamBacking = field(default_factory=RamBacking)
    disk_format: str = "qcow2"
    extra_args: tuple[str, ...] = ()
    incoming: bool = False
    xfer_disk: Path | None = None

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / QMP_SOCKET

    @property
    def agent_socket(self) -> Path:
        """Port 0: the one boot waits on."""
        return self.agent_sockets[0]

    @property
    def agent_sockets(self) -> list[Path]:
        return agent_socket_paths(self.run_dir)

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def stderr_log(self) -> Path:
        return self.run_dir / "qemu.stderr"


def agent_port_name(index: int) -> str:
    """Port 0 keeps the plain name (what the guest and image checks look for first)."""
    return AGENT_PORT_NAME if index == 0 else f"{AGENT_PORT_NAME}.{index}"


def agent_socket_paths(run_dir: Path) -> list[Path]:
    return [run_dir / ("agent.sock" if i == 0 else f"agent{i}.sock") for i in range(AGENT_PORTS)]


def memory_object(spec: VMSpec) -> str:
    size = f"{spec.memory_mib}M"
    if spec.ram.kind == "anonymous":
        return f"memory-backend-ram,id=mem0,size={size}"
    if spec.ram.path is None:
        raise ValueError("file-backed RAM needs a path")
    share = "on" if spec.ram.share else "off"
    return f"memory-backend-file,id=mem0,size={size},mem-path={spec.ram.path},share={share}"


def build_argv(spec: VMSpec, qemu_binary: str = "qemu-system-x86_64", *,
               daemonize: bool = True) -> list[str]:
    """The QEMU command line for ``spec``.

    Choices worth knowing:
    - ``microvm,acpi=off`` (the minimal kernel has no ACPI): QEMU puts the
      virtio-mmio devices on the kernel command line; ``rtc=on`` avoids a 1 s wait
      in the guest. Images say which ``-M`` they need (Debian's kernel wants ACPI).
    - ``-no-reboot`` + the guest's ``reboot=t panic=-1``: a guest reboot, power-off
      request or kernel panic ends the QEMU process, which is how crashes surface.
    - The root disk uses ``cache=unsafe``: sandboxes are disposable and snapshots
      flush explicitly, so guest fsyncs need not reach the host disk.
    - ``-daemonize`` returns only once QEMU has created its sockets, so the caller
      knows spawn succeeded; the pid comes from ``-pidfile``. A jailed QEMU
      (``daemonize=False``) must stay the PID 1 of its PID namespace instead; it keeps
      ``-pidfile`` so reconcile still recognises it by its run dir.
    """
    argv = [
        qemu_binary,
        "-name", f"smolbox-{spec.name},debug-threads=on",
        "-M", f"{spec.machine},isa-serial=on,memory-backend=mem0",
        *spec.accel_args,
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mib}M",
        "-object", memory_object(spec),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(spec.kernel),
        "-append", spec.cmdline,
        "-chardev", f"ringbuf,id={CONSOLE_CHARDEV},size={CONSOLE_RING_BYTES}",
        "-serial", f"chardev:{CONSOLE_CHARDEV}",
        "-drive",
        f"id={ROOT_DRIVE_ID},file={spec.disk},format={spec.disk_format},if=none,"
        "cache=unsafe,discard=unmap",
        "-device", f"virtio-blk-device,drive={ROOT_DRIVE_ID}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng0",
        "-device", f"virtio-serial-device,max_ports={AGENT_PORTS + 1}",
        *agent_port_args(spec),
        *xfer_disk_args(spec),
        "-qmp", f"unix:{spec.qmp_socket},server=on,wait=off",
        "-pidfile", str(spec.pidfile),
        *(["-daemonize"] if daemonize else []),
        *spec.extra_args,
    ]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    return argv


def agent_port_args(spec: VMSpec) -> list[str]:
    args: list[str] = []
    for index, socket_path in enumerate(spec.agent_sockets):
        args += ["-chardev", f"socket,id=agent{index},path={socket_path},server=on,wait=off",
                 "-device", f"virtserialport,chardev=agent{index},name={agent_port_name(index)}"]
    return args


def xfer_disk_args(spec: VMSpec) -> list[str]:
    """The transfer disk: a raw scratch device for fast uploads (see engine/transfer.py).

    Placed after the root disk so the guest still sees its root as /dev/vda.
    """
    if spec.xfer_disk is None:
        return []
    return ["-drive", f"id={XFER_DRIVE_ID},file={spec.xfer_disk},format=raw,if=none,"
            "cache=unsafe",
            "-device", f"virtio-blk-device,drive={XFER_DRIVE_ID},serial={XFER_SERIAL}"]


def has_power_button(machine: str) -> bool:
    """Only a machine type with ACPI has a power button QMP ``system_powerdown`` can press."""
    return "acpi=on" in machine

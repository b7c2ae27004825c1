"""A jail per QEMU: own uid, chroot of only its files, namespaces, seccomp, cgroup.

Why: smolbox runs untrusted code, and QEMU's device emulation is the wall between
it and the host. A QEMU that escapes its guest must find itself an unprivileged user
(``no_new_privs``, no capabilities) in a chroot holding only its own files, in its
own PID/mount/IPC/UTS namespaces (and an empty network namespace when the machine
has no network), behind QEMU's seccomp filter, and inside cgroup limits.

Layers and where they are made:
- uid: ``smolbox.vmm.uids`` (one per live machine, host-wide);
- cgroup: ``smolbox.host.cgroups`` (memory = guest RAM + ``VMM_OVERHEAD_MIB``,
  CPU quota = vcpus + ``VMM_CPUS`` host CPUs, pids);
- namespaces, mounts, chroot, privileges: ``jail_exec.py``, a standard-library-only
  child that finally execs QEMU (see its docstring for the order);
- seccomp: QEMU's own ``-sandbox`` (``SANDBOX``). Because it forbids spawning,
  snapshots hand QEMU file descriptors (``smolbox.vmm.migration``), and TAP devices
  are opened here and passed as ``fd=``.

Network: a machine without ``-netdev`` gets a new, empty network namespace; user
(slirp) and TAP machines stay in the host's network namespace (slirp needs the
host's stack; a TAP is passed as an open fd, so QEMU needs no CAP_NET_ADMIN).

RAM: a template's own RAM file is its QEMU's (bind-mounted read-write, owned by its
uid). A clone never sees its snapshot's RAM file: QEMU 7.2 opens ``mem-path``
read-write (and ``readonly=on`` maps guest RAM read-only, so the guest hangs), so the
clone gets an fd to a sealed memfd copy instead (``smolbox.vmm.ramshare``) and maps it
copy-on-write through ``/proc/self/fd/N``; the jail mounts a ``/proc`` showing only its
own PID namespace for that.

A host that cannot jail refuses to start machines (``JailerError``) unless the user
sets ``SMOLBOX_JAIL=off``, which ``smolbox doctor`` and ``smolbox info`` flag loudly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smolbox import errors
from smolbox.host import cgroups
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm import ramshare, uids
from smolbox.vmm.spec import RamBacking, VMSpec, build_argv

log = logging.getLogger("smolbox.vmm")

SANDBOX = ("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
           "resourcecontrol=deny")
# What QEMU needs beyond guest RAM under TCG: the translation cache it fills, its
# heap, thread stacks and page tables (a cold boot measured ~185 MiB RSS for 256 MiB
# of guest RAM); generous so a busy guest never trips it, bounded so a runaway VMM does.
VMM_OVERHEAD_MIB = 384
# One host CPU beyond the vCPUs for QEMU's main loop, I/O and migration threads: a
# quota of exactly ``vcpus`` doubled create -> first exec (0.45 -> 0.92 s, n=10) by
# throttling the restore, with the guest itself never the bottleneck.
VMM_CPUS = 1
PIDS_BASE = 128  # QEMU's main, RCU and I/O worker pool (up to 64) threads
RLIMIT_NOFILE = 4096
RECORD = "jail.json"  # in the run dir: what release() must undo
JAIL_DIR = "jail"  # in the run dir: the (empty on the host) chroot mount point
SPAWN_TIMEOUT = 30.0
ORPHAN_GROUP_SECONDS = 600.0
_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_EXEC_SCRIPT = Path(__file__).with_name("jail_exec.py")


def limits_for(spec: VMSpec) -> cgroups.Limits:
    return cgroups.Limits(
        memory_bytes=(spec.memory_mib + VMM_OVERHEAD_MIB) << 20,
        cpu_quota_us=(spec.vcpus + VMM_CPUS) * cgroups.CPU_PERIOD_US,
        pids_max=PIDS_BASE + 4 * spec.vcpus,
    )


# ------------------------------------------------------------------ files


def backing_chain(disk: Path) -> list[Path]:
    """The files a qcow2 overlay reads through (its backing file, theirs...).

    Read from the qcow2 header (backing file offset/size at bytes 8-20) rather than
    ``qemu-img info``: it is on every create's path, and a subprocess costs ~20 ms.
    """
    chain: list[Path] = []
    current = disk
    while len(chain) < 64:
        try:
            with open(current, "rb") as handle:
                header = handle.read(20)
                if len(header) < 20 or header[:4] != b"QFI\xfb":
                    break
                offset, size = struct.unpack(">QI", header[8:20])
                if offset == 0 or size == 0:
                    break
                handle.seek(offset)
                name = handle.read(size).decode()
        except OSError:
            break
        backing = Path(name) if os.path.isabs(name) else current.parent / name
        chain.append(backing)
        current = backing
    return chain


def _virtual_size(disk: Path) -> int:
    try:
        with open(disk, "rb") as handle:
            header = handle.read(32)
        if header[:4] == b"QFI\xfb":
            return int(struct.unpack(">Q", header[24:32])[0])
        return disk.stat().st_size
    except OSError:
        return 0


def _bind(source: Path, *, readonly: bool, kind: str = "file", device: bool = False,
          exec_: bool = False) -> dict[str, object]:
    return {"source": str(source), "readonly": readonly, "kind": kind, "device": device,
            "exec": exec_}


def _system_binds() -> tuple[list[dict[str, object]], list[list[str]]]:
    """QEMU's binary, libraries, modules and firmware (``/usr`` read-only), and the
    top-level links a merged-/usr system has (``/lib`` -> ``usr/lib``...)."""
    binds = [_bind(Path("/usr"), readonly=True, kind="dir", exec_=True)]
    links: list[list[str]] = []
    for top in ("/lib", "/lib64", "/bin", "/sbin", "/lib32", "/libx32"):
        path = Path(top)
        if path.is_symlink():
            links.append([top, os.readlink(path)])
        elif path.is_dir():
            binds.append(_bind(path, readonly=True, kind="dir", exec_=True))
    for device in ("/dev/null", "/dev/urandom"):
        binds.append(_bind(Path(device), readonly=False, device=True))
    return binds, links


def _make_readable(path: Path, reader_gid: int) -> None:
    """Let the jail reader group read ``path`` without opening it to others."""
    st = path.stat()
    need = 0o040
    if st.st_mode & 0o004:
        return
    if st.st_gid != reader_gid:
        os.chown(path, -1, reader_gid)
    if st.st_mode & need != need:
        os.chmod(path, (st.st_mode & 0o7777) | need)


def _own(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)


# ------------------------------------------------------------------ spawn


@dataclass
class _Made:
    """What a spawn made so far, undone by ``release`` on failure or at the end."""

    run_dir: Path
    host: cgroups.CgroupHost | None
    record: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        path = self.run_dir / RECORD
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.record))
        os.replace(temp, path)


def _tap_fds(argv: list[str]) -> tuple[list[str], list[int]]:
    """Open each ``-netdev tap,ifname=X`` here (as root) and hand QEMU the fd."""
    out: list[str] = []
    fds: list[int] = []
    for index, arg in enumerate(argv):
        if index and argv[index - 1] == "-netdev" and arg.startswith("tap,"):
            opts = dict(o.partition("=")[::2] for o in arg.split(",")[1:])
            ifname = opts.get("ifname", "")
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR)
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack(
                    "16sH", ifname.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR))
            except OSError as err:
                for opened in fds:
                    os.close(opened)
                raise errors.JailerError(f"Cannot open TAP {ifname}: {err.strerror}",
                                         step="namespace") from None
            fds.append(fd)
            out.append(f"tap,id={opts.get('id', 'net0')},fd={fd},vhost=off")
        else:
            out.append(arg)
    return out, fds


def _extra_drive_files(spec: VMSpec) -> list[Path]:
    """Files of read-only ``-drive`` options in ``extra_args`` (e.g. a cloud-init seed):
    the jail must show them too, read-only."""
    found = []
    for flag, value in zip(spec.extra_args, spec.extra_args[1:], strict=False):
        if flag != "-drive":
            continue
        options = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        if "file" in options and options.get("readonly") == "on":
            found.append(Path(options["file"]))
    return found


def plan_binds(spec: VMSpec) -> tuple[list[dict[str, object]], list[Path], list[Path]]:
    """(binds, paths the machine uid owns, paths the reader group reads) for ``spec``."""
    binds, _ = _system_binds()
    owned: list[Path] = [spec.run_dir, spec.disk]
    readable: list[Path] = [spec.kernel, *([spec.initrd] if spec.initrd else []),
                            *backing_chain(spec.disk), *_extra_drive_files(spec)]
    binds.append(_bind(spec.run_dir, readonly=False, kind="dir"))
    binds.append(_bind(spec.disk, readonly=False))
    if spec.xfer_disk is not None:
        binds.append(_bind(spec.xfer_disk, readonly=False))
        owned.append(spec.xfer_disk)
    for path in readable:
        binds.append(_bind(path, readonly=True))
    if spec.ram.kind == "file" and spec.ram.path is not None and spec.ram.share:
        binds.append(_bind(spec.ram.path, readonly=False))  # a template's own RAM
        owned.append(spec.ram.path)
    if any(arg == "kvm" for arg in spec.accel_args) and Path("/dev/kvm").exists():
        binds.append(_bind(Path("/dev/kvm"), readonly=False, device=True))
    return binds, owned, readable


def _shared_ram(spec: VMSpec, settings: JailSettings) -> tuple[int | None, str | None]:
    """A clone's RAM as an fd to its snapshot's sealed memfd (see the docstring)."""
    if spec.ram.kind != "file" or spec.ram.path is None or spec.ram.share:
        return None, None
    return ramshare.open_shared(spec.ram.path, settings.state_dir)


def spawn_jailed(spec: VMSpec, qemu_binary: str, settings: JailSettings) -> ProcessIdentity:
    """Start QEMU for ``spec`` inside a new jail; returns once its sockets exist."""
    for stale in (spec.qmp_socket, *spec.agent_sockets, spec.pidfile):
        stale.unlink(missing_ok=True)
    host = cgroups.detect()
    if host is None:
        raise errors.JailerError("This host has no cgroup hierarchy with the memory, cpu "
                                 "and pids controllers", step="cgroup")
    made = _Made(spec.run_dir, host)
    try:
        return _spawn(spec, qemu_binary, settings, made)
    except BaseException:
        release(spec.run_dir, settings)
        raise


def _spawn(spec: VMSpec, qemu_binary: str, settings: JailSettings,
           made: _Made) -> ProcessIdentity:
    assert made.host is not None
    claim = uids.claim(settings.state_dir, settings.uids, vm_id=spec.name,
                       run_root=spec.run_dir.parent)
    made.record.update(uid=claim.uid, claim=str(claim.path), name=spec.name)
    made.save()
    if spec.ram.kind == "file" and spec.ram.path is not None and spec.ram.share \
            and not spec.ram.path.exists():
        spec.ram.path.touch(mode=0o600)  # a bind mount needs an existing file
    binds, owned, readable = plan_binds(spec)
    made.record["owned"] = [str(p) for p in owned]
    made.save()
    try:
        for path in owned:
            _own(path, claim.uid)
        for path in readable:
            _make_readable(path, settings.uids.reader_gid)
    except OSError as err:
        raise errors.JailerError(f"Cannot give the jail its files: {err}", step="mount") from None
    limits = limits_for(spec)
    procs = cgroups.create(made.host, spec.name, limits)
    made.record.update(cgroup=spec.name, cgroup_version=made.host.version,
                       limits={"memory_bytes": limits.memory_bytes,
                               "cpu_quota_us": limits.cpu_quota_us,
                               "pids_max": limits.pids_max})
    made.save()
    root = spec.run_dir / JAIL_DIR
    root.mkdir(mode=0o755, exist_ok=True)
    ram_fd, ram_key = _shared_ram(spec, settings)
    if ram_fd is not None:
        made.record["ram_key"] = ram_key
        spec = replace(spec, ram=RamBacking("file", Path(f"/proc/self/fd/{ram_fd}"), False))
    try:
        argv, tap_fds = _tap_fds([*build_argv(spec, qemu_binary, daemonize=False),
                                  *SANDBOX])
    except BaseException:
        if ram_fd is not None:
            os.close(ram_fd)
        raise
    if ram_fd is not None:
        tap_fds.append(ram_fd)  # passed to QEMU and closed here like the TAP fds
    _, links = _system_binds()
    fsize = max([_virtual_size(spec.disk), spec.memory_mib << 20,
                 *([_virtual_size(spec.xfer_disk)] if spec.xfer_disk else [])]) + (1 << 30)
    report_r, report_w = os.pipe()
    plan = {"root": str(root), "binds": binds, "links": links, "uid": claim.uid,
            "gid": claim.uid, "groups": [settings.uids.reader_gid],
            "new_netns": "-netdev" not in argv, "cgroup_procs": [str(p) for p in procs],
            "proc": ram_fd is not None,
            "rlimits": {"NOFILE": RLIMIT_NOFILE, "FSIZE": fsize}, "argv": argv,
            "report_fd": report_w}
    try:
        with open(spec.stderr_log, "wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_EXEC_SCRIPT), marshal.dumps(plan).hex()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                pass_fds=(report_w, *tap_fds))
        os.close(report_w)
        report_w = -1
        raw = b""
        while chunk := os.read(report_r, 4096):
            raw += chunk
        child.wait(timeout=SPAWN_TIMEOUT)
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        for fd in tap_fds:
            os.close(fd)
    outcome = _report(raw)
    if "pid" not in outcome:
        step = str(outcome.get("step", "namespace"))
        raise errors.JailerError(
            f"Jailing QEMU failed at {step}: {outcome.get('error', 'no report')}", step=step,
            details={"stderr": _tail(spec.stderr_log)})
    identity = ProcessIdentity.of(int(outcome["pid"]))
    made.record["qemu"] = [identity.pid, identity.start_time]
    made.save()
    uids.record_qemu(claim, identity)
    if ram_key is not None:
        ramshare.register(settings.state_dir, ram_key, identity)
    _wait_for_sockets(spec, identity)
    return identity


def _report(raw: bytes) -> dict[str, Any]:
    """The exec step's marshal report; anything else (a crash) is an empty one."""
    try:
        outcome = marshal.loads(raw)
    except (EOFError, ValueError, TypeError):
        return {}
    return dict(outcome) if isinstance(outcome, dict) else {}


def _accepts(socket_path: Path) -> bool:
    """QMP listens (a bare connect, closed at once: QEMU then serves the next client)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(socket_path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _tail(path: Path) -> str:
    try:
        return path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""


def _wait_for_sockets(spec: VMSpec, identity: ProcessIdentity) -> None:
    """What ``-daemonize`` used to guarantee: QMP and agent sockets exist on return."""
    deadline = time.monotonic() + SPAWN_TIMEOUT
    wanted = [spec.qmp_socket, *spec.agent_sockets]
    while not (all(path.exists() for path in wanted) and _accepts(spec.qmp_socket)):
        if not identity.is_alive():
            raise errors.SpawnError("QEMU exited while starting in its jail",
                                    details={"stderr": _tail(spec.stderr_log)})
        if time.monotonic() > deadline:
            with suppress(errors.SmolboxError):
                identity.signal(9)
            raise errors.SpawnError(f"QEMU did not create its sockets within "
                                    f"{SPAWN_TIMEOUT:g} s",
                                    details={"stderr": _tail(spec.stderr_log)})
        time.sleep(0.002)


# ---------------------------------------------------------------- release


def read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / RECORD).read_text()))
    except (OSError, ValueError):
        return None


def release(run_dir: Path, settings: JailSettings | None = None) -> None:
    """Undo a machine's jail (cgroup, uid claim, jail dir) once its QEMU is gone.

    Idempotent and safe to call on any path; kills a QEMU the record names that is
    still alive (only that exact process), since a live process pins its cgroup.
    """
    record = read_record(run_dir)
    if record is None:
        shutil.rmtree(run_dir / JAIL_DIR, ignore_errors=True)
        return
    qemu = record.get("qemu")
    if qemu is not None:
        identity = ProcessIdentity(int(qemu[0]), int(qemu[1]))
        if identity.is_alive():
            with suppress(errors.SmolboxError):
                identity.signal(9)
            deadline = time.monotonic() + 5.0
            while identity.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
    host = cgroups.detect()
    if record.get("cgroup") and host is not None and not cgroups.remove(
            host, str(record["cgroup"])):
        log.warning("cgroup smolbox/%s still has tasks; reconcile removes it later",
                    record["cgroup"])
    for owned in record.get("owned", []):
        with suppress(OSError):
            os.chown(owned, 0, 0)  # the uid may go to another machine next
    if record.get("claim"):
        uids.release(Path(record["claim"]))
    with suppress(OSError):
        os.rmdir(run_dir / JAIL_DIR)
    (run_dir / RECORD).unlink(missing_ok=True)


def sweep(run_root: Path, known: set[str], live: set[str],
          settings: JailSettings) -> list[str]:
    """Reconcile: stale uid claims made under ``run_root`` (this home; stale: their
    QEMU, or before spawn their claimer, is dead), and the empty cgroups of ``known``
    machines (rows of this home) that are not live. Other homes are never touched."""
    removed: list[str] = []
    for path, vm_id in uids.claims_of(settings.state_dir, run_root).items():
        if vm_id not in live and uids.release_if_stale(path):
            removed.append(f"uid claim {path.name} ({vm_id})")
    host = cgroups.detect()
    if host is not None:
        for name in cgroups.names(host) - live:
            # A group is empty only between its creation and the join (milliseconds) or
            # after its QEMU died: an old empty one is garbage whichever home made it.
            orphan = name in known or cgroups.age(host, name) > ORPHAN_GROUP_SECONDS
            if orphan and cgroups.remove(host, name, tries=1):
                removed.append(f"cgroup smolbox/{name}")
    removed += ramshare.sweep(settings.state_dir)
    return removed


def describe(run_dir: Path) -> dict[str, Any] | None:
    """For ``smolbox info``: uid, cgroup path and the limits the kernel holds now."""
    record = read_record(run_dir)
    if record is None:
        return None
    info: dict[str, Any] = {"uid": record.get("uid"), "limits": record.get("limits")}
    if record.get("ram_key"):
        info["ram"] = "snapshot RAM shared read-only (sealed memfd, copy-on-write)"
    host = cgroups.detect()
    if host is not None and record.get("cgroup"):
        name = str(record["cgroup"])
        info["cgroup"] = f"{cgroups.GROUP}/{name} (v{host.version})"
        held = cgroups.read_limits(host, name)
        if held is not None:
            info["limits"] = {"memory_bytes": held.memory_bytes,
                              "cpu_quota_us": held.cpu_quota_us, "pids_max": held.pids_max}
    return info

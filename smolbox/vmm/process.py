"""Spawning QEMU and knowing, later and from any process, whether it is still ours.

QEMU is started with ``-daemonize`` so it outlives the CLI command that created the
machine (the embedded engine has no daemon) and is never left as a zombie of a
long-running SDK process. The identity recorded is pid + start time, so a later
reconcile never signals a pid the kernel has handed to something else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import suppress
from pathlib import Path

from smolbox import errors
from smolbox.host.jailhost import JailSettings
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm.jail import spawn_jailed
from smolbox.vmm.spec import VMSpec, build_argv

QEMU_BINARY = "qemu-system-x86_64"
_STDERR_TAIL = 4000


def qemu_binary() -> str:
    found = shutil.which(QEMU_BINARY)
    if found is None:
        raise errors.HostToolMissingError(QEMU_BINARY, package="qemu-system-x86")
    return found


def spawn(spec: VMSpec, *, jail: JailSettings | None = None,
          timeout: float = 30.0) -> ProcessIdentity:
    """Start QEMU for ``spec``; return once its sockets exist (``-daemonize`` semantics).

    With ``jail`` enabled (the default everywhere) QEMU runs confined (see
    ``smolbox.vmm.jail``); a host that cannot jail refuses unless the user opted out.
    """
    if jail is not None and jail.enabled:
        if os.geteuid() != 0:
            raise errors.JailerError(
                "Jailing QEMU needs root (own uid, namespaces, chroot, cgroups)", step="uid",
                help="Run smolbox as root, or opt out explicitly with SMOLBOX_JAIL=off "
                     "(QEMU then runs unconfined; `smolbox doctor` flags it).")
        return spawn_jailed(spec, qemu_binary(), jail)
    argv = build_argv(spec, qemu_binary=qemu_binary())
    for stale in (spec.qmp_socket, *spec.agent_sockets, spec.pidfile):
        stale.unlink(missing_ok=True)
    try:
        with open(spec.stderr_log, "wb") as log:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                timeout=timeout, start_new_session=True, close_fds=True, check=False,
            )
    except subprocess.TimeoutExpired:
        kill_from_pidfile(spec.pidfile)
        raise errors.SpawnError(
            f"QEMU did not finish starting within {timeout:g} s",
            details={"stderr": read_tail(spec.stderr_log)},
        ) from None
    except OSError as err:
        raise errors.SpawnError(f"Cannot run {argv[0]}: {err}") from None
    if done.returncode != 0:
        raise errors.SpawnError(
            f"QEMU exited with status {done.returncode} while starting",
            details={"stderr": read_tail(spec.stderr_log), "argv": argv},
        )
    pid = read_pidfile(spec.pidfile)
    if pid is None:
        raise errors.SpawnError("QEMU started but wrote no pidfile",
                                details={"stderr": read_tail(spec.stderr_log)})
    try:
        return ProcessIdentity.of(pid)
    except errors.SmolboxError:
        raise errors.SpawnError(
            "QEMU exited right after starting",
            details={"stderr": read_tail(spec.stderr_log)},
        ) from None


def read_pidfile(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def kill_from_pidfile(pidfile: Path) -> None:
    """Last-resort cleanup after a failed spawn: only ever a process we just started."""
    pid = read_pidfile(pidfile)
    if pid is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, 9)


def read_tail(path: Path, limit: int = _STDERR_TAIL) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""

"""The jail's exec step: the one process that turns root into a confined QEMU.

Run as ``python -I -S jail_exec.py PLAN`` by ``smolbox.vmm.jail`` (standard
library only, executed by path: a few ms of start-up, and no thread of the caller is
copied, which a ``fork`` of a threaded server or a ``preexec_fn`` would risk). The
plan (hex in argv) and the report are ``marshal`` data: importing ``json`` alone
costs ~9 ms here, on every create's path.

Steps, in order (the step name is what a failure reports):

1. ``cgroup``: join the machine's cgroups (children inherit them).
2. ``namespace``: unshare mount, PID, IPC, UTS (and network when asked).
3. ``mount``: make ``/`` private, put a tmpfs on the jail dir and bind-mount into it,
   at the same paths as on the host, only what this QEMU needs; the tmpfs is then
   made read-only. Mounts live in the new mount namespace only: they vanish with the
   last process in it, so a killed QEMU leaves no mount on the host.
4. fork: QEMU must be PID 1 of the new PID namespace (a multithreaded program cannot
   be the process that called ``unshare(CLONE_NEWPID)``). The child continues:
   for a clone, ``mount`` a ``/proc`` of only its PID namespace (its RAM is
   ``/proc/self/fd/N``, see ``smolbox.vmm.ramshare``), then
5. ``chroot`` into the jail dir; ``uid``: drop the capability bounding set, clear
   supplementary groups except the jail's reader group, set gid and uid (which clears
   every capability), ``no_new_privs``, rlimits; then exec QEMU, whose own seccomp
   filter (``-sandbox``) is the last layer (``seccomp``).

The parent writes ``{"pid": N}`` (N as seen from the host) or ``{"step", "error"}``
to the report fd and exits, so QEMU is re-parented and never a zombie of the caller.
"""

import ctypes
import marshal
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
LAST_CAP = 63

_libc = ctypes.CDLL(None, use_errno=True)


class StepError(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


def _check(step: str, what: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise StepError(step, f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check("mount", f"mount {source} on {target}",
           _libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, flags,
                       data.encode() if data else None))


def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        try:
            with open(path, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as err:
            raise StepError("cgroup", f"join {path}: {err.strerror}") from None


def _build_root(root: str, binds: list[dict[str, object]], links: list[list[str]],
                proc: bool) -> None:
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    if proc:
        os.mkdir(root + "/proc", 0o555)
    for link, target in links:
        os.symlink(target, root + link)
    for bind in binds:
        source, kind = str(bind["source"]), str(bind["kind"])
        target = root + source
        try:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if kind == "dir":
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as err:
            raise StepError("mount", f"mount point {target}: {err.strerror}") from None
        _mount(source, target, None, MS_BIND | (MS_REC if kind == "dir" else 0))
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID
        if bind["readonly"]:
            flags |= MS_RDONLY
        if not bind["device"]:
            flags |= MS_NODEV
        if not bind["exec"]:
            flags |= MS_NOEXEC
        _mount(source, target, None, flags)
    _mount("tmpfs", root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mount_proc(root: str) -> None:
    """In PID 1 of the new PID namespace: a ``/proc`` holding only that namespace's
    processes (``subset=pid``: no sysctls, no kernel files), for ``/proc/self/fd``."""
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "subset=pid,hidepid=invisible")


def _confine(plan: dict[str, object]) -> None:
    """In the forked PID 1: chroot, drop to the machine's uid, then exec QEMU."""
    root = str(plan["root"])
    _check("chroot", f"chroot {root}", _libc.chroot(root.encode()))
    os.chdir("/")
    for name, value in dict(plan["rlimits"]).items():  # type: ignore[call-overload]
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (int(value), int(value)))
    for cap in range(LAST_CAP + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap
    uid, gid = int(plan["uid"]), int(plan["gid"])  # type: ignore[call-overload]
    try:
        os.setgroups([int(g) for g in plan["groups"]])  # type: ignore[attr-defined]
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as err:
        raise StepError("uid", f"switch to uid {uid}: {err.strerror}") from None
    _check("uid", "no_new_privs", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    argv = [str(a) for a in plan["argv"]]  # type: ignore[attr-defined]
    try:
        os.execv(argv[0], argv)
    except OSError as err:
        raise StepError("seccomp", f"exec {argv[0]}: {err.strerror}") from None


def main() -> int:
    plan = marshal.loads(bytes.fromhex(sys.argv[1]))
    report = int(plan["report_fd"])
    errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
    try:
        _join_cgroups(list(plan["cgroup_procs"]))
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if plan["new_netns"]:
            flags |= CLONE_NEWNET
        _check("namespace", "unshare", _libc.unshare(flags))
        _build_root(str(plan["root"]), list(plan["binds"]), list(plan["links"]),
                    bool(plan.get("proc")))
        child = os.fork()
        if child == 0:
            os.close(errors_r)
            os.close(report)  # the caller reads the report to EOF: QEMU must not hold it
            try:
                _libc.sethostname(b"smolbox", 7)
                if plan.get("proc"):
                    _mount_proc(str(plan["root"]))
                _confine(plan)
            except StepError as err:
                os.write(errors_w, marshal.dumps({"step": err.step, "error": str(err)}))
            except BaseException as err:
                os.write(errors_w, marshal.dumps({"step": "chroot", "error": repr(err)}))
            os._exit(127)
        os.close(errors_w)
        failure = b""
        while chunk := os.read(errors_r, 4096):  # EOF once exec closed the pipe
            failure += chunk
        if failure:
            os.waitpid(child, 0)
            os.write(report, failure)
            return 1
        os.write(report, marshal.dumps({"pid": child}))
        return 0
    except StepError as err:
        os.write(report, marshal.dumps({"step": err.step, "error": str(err)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())

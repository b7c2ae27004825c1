"""Keeper of one snapshot's RAM as a sealed memfd, shared read-only by jailed clones.

Run as ``python -I -S ram_keeper.py RAM_FILE USERS_FILE IDLE_SECONDS`` by
``smolbox.vmm.ramshare`` (standard library only, executed by path). Why a process:
QEMU 7.2 opens ``mem-path`` read-write, so a clone cannot be handed its snapshot's RAM
file read-only; instead every clone maps this memfd privately (copy-on-write) through
``/proc/self/fd/N``. The memfd carries ``F_SEAL_WRITE``/``SHRINK``/``GROW``/``SEAL``:
the kernel refuses every write, truncate and hole punch to it from any process, so a
compromised QEMU cannot change the pages other clones share. Something must hold the
memfd between clones (the engine has no daemon): this keeper.

Steps: create the memfd, copy the RAM file into it (data extents only: holes stay
holes, reading as zeros), seal it, then fork; the child keeps the memfd on fd 3 and the
parent prints ``{"pid": N, "fd": 3, "inode": I}`` and exits, so the keeper is nobody's
child (never a zombie of an engine). It exits on its own when the RAM file is gone or
replaced, or when no QEMU listed in USERS_FILE (``pid start_time`` lines, appended by
the spawners) has been alive for IDLE_SECONDS. Clones keep working after it exits:
each QEMU holds its own reference to the memfd.
"""

import fcntl
import json
import os
import sys
import time

KEPT_FD = 3
POLL_SECONDS = 0.5
CHUNK = 1 << 24


def _copy_data(source: int, target: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(source, start, os.SEEK_HOLE)
        os.lseek(target, start, os.SEEK_SET)  # sendfile writes at the target's position
        while start < end:
            sent = os.sendfile(target, source, start, min(CHUNK, end - start))
            if sent <= 0:
                raise OSError(f"short copy at {start}")
            start += sent
        offset = end


def _sealed_copy(path: str) -> tuple[int, os.stat_result]:
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        identity = os.fstat(source)
        memfd = os.memfd_create("smolbox-ram", os.MFD_ALLOW_SEALING)
        os.ftruncate(memfd, identity.st_size)
        _copy_data(source, memfd, identity.st_size)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    finally:
        os.close(source)
    if memfd != KEPT_FD:
        os.dup2(memfd, KEPT_FD, inheritable=False)
        os.close(memfd)
    return KEPT_FD, identity


def _same_file(path: str, identity: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
        identity.st_dev, identity.st_ino, identity.st_size, identity.st_mtime_ns)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _users_alive(users_file: str) -> bool:
    try:
        with open(users_file) as handle:
            lines = handle.read().split("\n")
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and _start_time(int(parts[0])) == int(parts[1]):
            return True
    return False


def _keep(path: str, identity: os.stat_result, users_file: str, idle: float) -> None:
    last_used = time.monotonic()
    while _same_file(path, identity):
        time.sleep(POLL_SECONDS)
        if _users_alive(users_file):
            last_used = time.monotonic()
        elif time.monotonic() - last_used > idle:
            return


def main() -> int:
    path, users_file, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        fd, identity = _sealed_copy(path)
    except OSError as err:
        print(json.dumps({"error": f"{path}: {err}"}), flush=True)
        return 1
    child = os.fork()
    if child:
        print(json.dumps({"pid": child, "fd": fd, "inode": os.fstat(fd).st_ino}), flush=True)
        return 0
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    _keep(path, identity, users_file, idle)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

"""A snapshot's RAM for jailed clones: one sealed memfd per RAM file, host-wide.

Why: a clone maps its snapshot's RAM copy-on-write, and every clone of that snapshot
shares the unmodified pages. Under a jail that mapping must be read-only for the clone
(one compromised QEMU must not rewrite the pages all its siblings run on), but QEMU
7.2 opens ``mem-path`` read-write. So the RAM file is copied once into a memfd sealed
against writes (``ram_keeper.py`` holds it) and each clone's QEMU gets an fd to it
and ``mem-path=/proc/self/fd/N``: the kernel refuses writes, truncation and hole
punching on it, private copy-on-write mappings still work, and the pages stay shared.

State, under the jail state dir (``/run/smolbox-jail/ram``), per RAM file identity
(device, inode, size, mtime): ``<key>.json`` (the keeper: pid, start time, fd, memfd
inode), ``<key>.users`` (QEMUs using it, so the keeper can exit when idle) and
``<key>.lock`` (one keeper per file even with several engines starting clones).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from smolbox import errors
from smolbox.host.locks import exclusive
from smolbox.host.procs import ProcessIdentity

RAM_DIR = "ram"
IDLE_SECONDS = 600.0  # a keeper outlives its last clone this long (a copy costs ~70 ms)
START_TIMEOUT = 60.0  # copying a large RAM file into memory
_KEEPER_SCRIPT = Path(__file__).with_name("ram_keeper.py")


def _key(ram_file: Path) -> str:
    st = ram_file.stat()
    identity = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def idle_seconds() -> float:
    """``SMOLBOX_RAM_KEEPER_IDLE`` overrides (tests use a short one)."""
    try:
        return float(os.environ.get("SMOLBOX_RAM_KEEPER_IDLE", IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS


def _open_kept(record: dict[str, int]) -> int | None:
    """An O_RDONLY fd to the keeper's memfd, or None if that keeper is gone."""
    keeper = ProcessIdentity(int(record["pid"]), int(record["start_time"]))
    if not keeper.is_alive():
        return None
    try:
        fd = os.open(f"/proc/{keeper.pid}/fd/{record['fd']}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if os.fstat(fd).st_ino != int(record["inode"]) or not keeper.is_alive():
        os.close(fd)
        return None
    return fd


def _start_keeper(ram_file: Path, users: Path) -> dict[str, int]:
    users.write_text("")
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", str(_KEEPER_SCRIPT), str(ram_file), str(users),
         repr(idle_seconds())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True)
    assert child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT)
        line = child.stdout.readline() if ready else b""
        child.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        line = b""
    finally:
        child.stdout.close()
    report = json.loads(line or b"{}")
    if "pid" not in report:
        raise errors.JailerError(
            f"Cannot share {ram_file.name} read-only with the jail: "
            f"{report.get('error', 'its keeper did not start')}", step="mount",
            details={"ram_file": str(ram_file)})
    keeper = ProcessIdentity.of(int(report["pid"]))
    return {"pid": keeper.pid, "start_time": keeper.start_time, "fd": int(report["fd"]),
            "inode": int(report["inode"])}


def open_shared(ram_file: Path, state_dir: Path) -> tuple[int, str]:
    """(fd, key): an fd to the sealed copy of ``ram_file`` (start its keeper if none
    lives). The caller passes the fd to QEMU, then calls :func:`register`."""
    directory = state_dir / RAM_DIR
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = _key(ram_file)
        record_path = directory / f"{key}.json"
        with exclusive(directory / f"{key}.lock"):
            with suppress(OSError, ValueError, KeyError):
                fd = _open_kept(json.loads(record_path.read_text()))
                if fd is not None:
                    return fd, key
            record = _start_keeper(ram_file, directory / f"{key}.users")
            fd = _open_kept(record)
            if fd is None:
                raise errors.JailerError(f"The keeper of {ram_file.name} exited at once",
                                         step="mount", details={"ram_file": str(ram_file)})
            temp = record_path.with_suffix(".tmp")
            temp.write_text(json.dumps(record))
            os.replace(temp, record_path)
            return fd, key
    except OSError as err:
        raise errors.JailerError(f"Cannot share {ram_file.name} read-only with the jail: "
                                 f"{err}", step="mount",
                                 details={"ram_file": str(ram_file)}) from None


def register(state_dir: Path, key: str, qemu: ProcessIdentity) -> None:
    """Tell the keeper ``qemu`` uses it (it stays while any listed QEMU lives); drops
    the entries of QEMUs that are gone."""
    directory = state_dir / RAM_DIR
    users = directory / f"{key}.users"
    with suppress(OSError), exclusive(directory / f"{key}.lock"):
        kept = [qemu]
        with suppress(OSError):
            for line in users.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    other = ProcessIdentity(int(parts[0]), int(parts[1]))
                    if other.is_alive():
                        kept.append(other)
        temp = users.with_suffix(".users-tmp")
        temp.write_text("".join(f"{p.pid} {p.start_time}\n" for p in kept))
        os.replace(temp, users)


def sweep(state_dir: Path) -> list[str]:
    """Reconcile: the files of keepers that are gone (a live keeper owns its own)."""
    removed: list[str] = []
    directory = state_dir / RAM_DIR
    with suppress(OSError):
        for record_path in directory.glob("*.json"):
            key = record_path.stem
            with exclusive(directory / f"{key}.lock"):
                try:
                    record = json.loads(record_path.read_text())
                    alive = ProcessIdentity(int(record["pid"]),
                                            int(record["start_time"])).is_alive()
                except (OSError, ValueError, KeyError):
                    alive = False
                if not alive:
                    for suffix in (".json", ".users"):
                        (directory / f"{key}{suffix}").unlink(missing_ok=True)
                    removed.append(f"RAM keeper record {key}")
    return removed

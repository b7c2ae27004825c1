"""One unprivileged uid per live jailed QEMU, from a configured range, host-wide.

Why a directory of claim files and not the store: several smolbox homes (tests,
users) may run on one host with one uid range, and a uid must never be shared by
two live machines whatever home they belong to. A claim is ``<dir>/<uid>`` made
with ``O_EXCL`` (atomic); it records the claiming process and, once spawned, the
QEMU's identity. A claim whose QEMU (or, before spawn, whose claimer) is dead is
stale and taken over, so a kill -9 anywhere never leaks a uid for good.

Taking over or sweeping a stale claim happens under one lock (``.lock`` in the
directory, ``flock``): "stale?" then "unlink" is not atomic, and without the lock a
second process that had also judged the old claim stale unlinked the fresh claim a
first one had just made in its place (a QEMU then started with no claim; seen in CI).
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors
from smolbox.host.jailhost import UidRange
from smolbox.host.locks import exclusive
from smolbox.host.procs import ProcessIdentity, owner_alive, owner_token


@dataclass(frozen=True)
class Claim:
    uid: int
    path: Path


def stale(path: Path) -> bool:
    """Whether the claim's QEMU (or, before spawn, its claimer) is gone."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # being written right now
    qemu = record.get("qemu")
    if qemu is not None:
        return not ProcessIdentity(int(qemu[0]), int(qemu[1])).is_alive()
    return not owner_alive(str(record.get("owner", "")))


LOCK = ".lock"


def release_if_stale(path: Path) -> bool:
    """Remove ``path`` if it is (still, under the lock) a stale claim."""
    with exclusive(path.parent / LOCK):
        if path.exists() and stale(path):
            release(path)
            return True
    return False


def claim(directory: Path, uids: UidRange, *, vm_id: str, run_root: Path) -> Claim:
    """The lowest free uid of ``uids``, claimed for ``vm_id``."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise errors.JailerError(f"Cannot create the uid claim directory {directory}: "
                                 f"{err.strerror}", step="uid") from None
    body = json.dumps({"vm": vm_id, "run_root": str(run_root), "owner": owner_token()})
    try:
        with exclusive(directory / LOCK):
            for uid in range(uids.first + 1, uids.last + 1):
                path = directory / str(uid)
                if path.exists() and stale(path):
                    release(path)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as handle:
                    handle.write(body)
                return Claim(uid, path)
    except OSError as err:
        raise errors.JailerError(f"Cannot claim a uid in {directory}: {err.strerror}",
                                 step="uid") from None
    raise errors.JailerError(f"Every uid of {uids.first + 1}-{uids.last} is in use",
                             step="uid", help="Widen SMOLBOX_JAIL_UIDS or delete machines.")


def record_qemu(claim_: Claim, identity: ProcessIdentity) -> None:
    """From now on the claim lives exactly as long as this QEMU.

    Should the claim have vanished while QEMU started (the race the module lock
    closes), it is written again for this QEMU, unless another machine took the uid
    meanwhile, which is a typed error."""
    try:
        record = json.loads(claim_.path.read_text())
    except FileNotFoundError:
        record = {"owner": owner_token()}
        with suppress(FileExistsError):
            os.close(os.open(claim_.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            record = {**record, "reclaimed": True}
        if not record.get("reclaimed"):
            raise errors.JailerError(f"uid {claim_.uid} was claimed by another machine while "
                                     "this QEMU started", step="uid") from None
    record["qemu"] = [identity.pid, identity.start_time]
    temp = claim_.path.with_suffix(".tmp")
    temp.write_text(json.dumps(record))
    os.replace(temp, claim_.path)


def release(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()


def claims_of(directory: Path, run_root: Path) -> dict[Path, str]:
    """claim file -> machine id, for the claims made under ``run_root`` (one home)."""
    found: dict[Path, str] = {}
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        if not path.name.isdigit():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("run_root") == str(run_root):
            found[path] = str(record.get("vm"))
    return found

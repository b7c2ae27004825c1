"""Turn sqlite3 exceptions into catalogue errors.

Why: a raw ``sqlite3.OperationalError: database is locked`` tells a user nothing
about what to do. SQLite reports *why* it failed in ``sqlite_errorname``
(``SQLITE_BUSY``, ``SQLITE_CORRUPT``…), which maps cleanly to what the user can
do about it: wait and retry, free disk, fix permissions, or move a damaged
database away.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from smolbox import errormap, errors

_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_FULL = ("SQLITE_FULL",)
_ACCESS = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH", "SQLITE_IOERR")
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT", "SQLITE_SCHEMA")


def _name(err: sqlite3.Error) -> str:
    name = getattr(err, "sqlite_errorname", None)
    if isinstance(name, str):
        return name
    text = str(err).lower()
    if "locked" in text or "busy" in text:
        return "SQLITE_BUSY"
    if "not a database" in text or "malformed" in text:
        return "SQLITE_CORRUPT"
    if "unable to open" in text or "readonly" in text:
        return "SQLITE_CANTOPEN"
    return "SQLITE_ERROR"


def _disk_full(path: Path) -> bool:
    """An I/O error on a disk with (almost) no space left is that disk being full
    (growing ``-shm`` fails as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL)."""
    free = errormap.free_bytes(path.parent)
    return free is not None and free < (1 << 20)


def translate(err: sqlite3.Error, path: Path, operation: str) -> errors.SmolboxError:
    """The catalogue error for ``err`` raised while doing ``operation`` on ``path``."""
    name = _name(err)
    details = {"path": str(path), "operation": operation, "sqlite_error": name,
               "sqlite_message": str(err)}
    if name.startswith(_BUSY):
        return errors.UnavailableError(
            f"The smolbox store is busy ({operation}): another process holds the write lock",
            details=details,
            help="Retry; if it persists, look for a hung smolbox process holding "
                 f"{path} (e.g. `fuser {path}`).",
        )
    if name.startswith(_FULL) or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        free = errormap.free_bytes(path.parent)
        return errors.DiskSpaceError(
            f"The disk holding the smolbox store is full ({operation})", path=str(path.parent),
            free_bytes=free, details=details,
        )
    if name.startswith(_ACCESS):
        return errors.HostError(
            f"Cannot access the smolbox store at {path} ({operation}): {err}",
            details=details,
            help="Check that SMOLBOX_HOME exists, is writable by this user and on a "
                 "local file system.",
        )
    if name.startswith(_DAMAGED):
        return errors.StatePoisonedError(
            reason=f"store database is damaged: {err}",
            message=f"The smolbox store at {path} is damaged ({operation}): {err}",
            details=details,
            help=f"Stop smolbox, move {path} aside (it holds the machine records) and run "
                 "again; machines from the old store must be cleaned up by hand.",
        )
    return errors.StatePoisonedError(
        reason=f"unexpected database error: {err}",
        message=f"Unexpected smolbox store error ({operation}): {err}",
        details=details,
        help="This is likely a smolbox bug; report it with these details. "
             "`smolbox doctor` checks the host.",
    )

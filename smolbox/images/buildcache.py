"""The machine-wide cache of heavy build outputs (kernel, base rootfs).

Why: a kernel build takes ~5 minutes and a debootstrap ~30 s, so each output is
built once per machine and kept in ``$SMOLBOX_CACHE/build/<kind>-<key>`` where
``key`` is the SHA-256 of everything that went into it. A fresh clone computes
the same key and reuses the output. Entries appear atomically (built in a temp
dir next to them, then renamed), and a per-entry lock stops two processes from
building the same thing twice; leftovers of a killed build are removed by the
next builder holding the lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from smolbox.errors import ImageCacheUnreadableError

Producer = Callable[[Path, Path], None]
"""``producer(out_dir, work_dir)`` fills ``out_dir``; ``work_dir`` is scratch space."""


def cache_entry(build_root: Path, kind: str, key: str) -> Path:
    """Where the output for ``kind``/``key`` lives (whether or not it exists yet)."""
    return build_root / f"{kind}-{key}"


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_built(build_root: Path, kind: str, key: str, producer: Producer) -> Path:
    """Return the cache entry for ``kind``/``key``, building it with ``producer`` if absent."""
    entry = cache_entry(build_root, kind, key)
    if entry.is_dir():
        return entry
    try:
        build_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except PermissionError as err:
        raise ImageCacheUnreadableError(
            f"Cannot create the build cache {build_root}: {err.strerror}",
            details={"path": str(build_root)},
            help="Check permissions of SMOLBOX_CACHE, or point it at a writable directory.",
        ) from None
    with _locked(build_root / f".{kind}-{key}.lock"):
        if entry.is_dir():  # another process finished it while we waited
            return entry
        prefix = f".tmp-{kind}-{key}-"
        for stale in build_root.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=build_root))
        try:
            out = scratch / "out"
            work = scratch / "work"
            out.mkdir()
            work.mkdir()
            producer(out, work)
            os.rename(out, entry)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return entry


def log_path(build_root: Path, kind: str, key: str) -> Path:
    """The build log of an entry; kept outside the scratch dir so it survives a failure."""
    logs = build_root / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    return logs / f"{kind}-{key}.log"


def prune(build_root: Path, kind: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest entries of ``kind``; returns what was removed.

    Used for assembled images, which change with every guest-agent edit. Installed
    images hold hard links, so pruning the cache never breaks the catalogue. An entry
    whose lock is held (being built or installed right now) is left alone.
    """
    entries = sorted((p for p in build_root.glob(f"{kind}-*") if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for entry in entries[keep:]:
        lock_path = build_root / f".{entry.name}.lock"
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                doomed = build_root / f".tmp-prune-{entry.name}"
                os.rename(entry, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(entry)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        lock_path.unlink(missing_ok=True)
    return removed

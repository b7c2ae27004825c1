"""Snapshot files: what a snapshot is on disk, how it is written and checked.

A snapshot directory holds three files and a manifest:

- ``ram``   – guest RAM as a plain file. Clones map it ``share=off``: private
  copy-on-write, so N clones share one page cache copy and the file never changes.
- ``state`` – QEMU device state saved with ``x-ignore-shared`` (a few KiB).
- ``disk.qcow2`` – the machine's disk at snapshot time (a qcow2 over the image's
  rootfs); clones get a thin overlay over it.
- ``manifest.json`` – sizes and SHA-256 of every file plus what is needed to start
  a matching QEMU (memory, vcpus, kernel, cmdline, image).

Snapshots are written into a temporary directory next to the store and renamed
into place only when complete, so a crash mid-snapshot never leaves a half
snapshot listed (the pending row is cleaned up by reconcile).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolbox import errors

FILES = ("ram", "state", "disk.qcow2")
_HASH_CHUNK = 4 << 20


@dataclass(frozen=True)
class SnapshotFiles:
    root: Path

    @property
    def ram(self) -> Path:
        return self.root / "ram"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def stream(self) -> Path:
        """Full state + RAM as saved from the source machine (temporary)."""
        return self.root / "stream"

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise errors.SnapshotCorruptError(
                f"Snapshot manifest at {self.manifest_path} is unreadable: {err}",
                details={"path": str(self.manifest_path)},
            ) from None
        if not isinstance(data, dict):
            raise errors.SnapshotCorruptError("Snapshot manifest is not an object")
        return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(files: SnapshotFiles) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for name in FILES:
        path = files.root / name
        stat = path.stat()
        entries[name] = {"size": stat.st_size, "sha256": sha256_of(path),
                         "mtime_ns": stat.st_mtime_ns}
    return entries


def verify(files: SnapshotFiles, manifest: dict[str, Any], *, deep: bool = False) -> None:
    """Check the files against the manifest.

    Cheap by default (presence, size, mtime: what changes when anything rewrites a
    file); a mismatch there, or ``deep=True``, hashes the file, so a clone never
    starts from a silently modified RAM or disk file.
    """
    entries = manifest.get("files", {})
    for name in FILES:
        path = files.root / name
        expected = entries.get(name)
        if expected is None:
            raise errors.SnapshotCorruptError(f"Snapshot manifest lists no '{name}'",
                                              details={"path": str(files.root)})
        try:
            stat = path.stat()
        except OSError:
            raise errors.SnapshotCorruptError(
                f"Snapshot file '{name}' is missing", details={"path": str(path)},
            ) from None
        changed = (stat.st_size != expected["size"]
                   or stat.st_mtime_ns != expected.get("mtime_ns"))
        if (deep or changed) and sha256_of(path) != expected["sha256"]:
            raise errors.SnapshotCorruptError(
                f"Snapshot file '{name}' does not match its SHA-256",
                details={"path": str(path), "expected": expected["sha256"]},
            )


def copy_file(src: Path, dest: Path) -> None:
    """Copy keeping holes (RAM files are mostly zero pages)."""
    with open(src, "rb") as source, open(dest, "wb") as target:
        size = os.fstat(source.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                data_at = os.lseek(source.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            hole_at = os.lseek(source.fileno(), data_at, os.SEEK_HOLE)
            source.seek(data_at)
            target.seek(data_at)
            remaining = hole_at - data_at
            while remaining:
                chunk = source.read(min(remaining, _HASH_CHUNK))
                if not chunk:
                    break
                target.write(chunk)
                remaining -= len(chunk)
            offset = hole_at
        target.truncate(size)

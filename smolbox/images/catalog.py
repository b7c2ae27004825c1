"""The image catalogue: ``$SMOLBOX_IMAGES/<name>/<version>/`` with a manifest each.

Why this shape: the engine boots machines from ``rootfs`` through thin qcow2
overlays, so an installed image must never change after install. Installs are
atomic (staged in ``.staging`` on the same filesystem, then renamed), files are
made read-only, and every file is checked against the manifest's SHA-256 before
its first use after any change. The check is remembered per file by
(size, mtime) in ``.verified.json``, so a 1 GiB rootfs is not hashed on every
machine start.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from smolbox.errors import (
    ImageAlreadyExistsError,
    ImageCacheUnreadableError,
    ImageChecksumMismatchError,
    ImageCorruptError,
    ImageError,
    ImageFileMissingError,
    ImageNotFoundError,
)
from smolbox.images.hashing import sha256_file
from smolbox.images.manifest import MANIFEST, NAME_PATTERN, VERSION_PATTERN, ImageManifest
from smolbox.paths import Paths

VERIFIED = ".verified.json"
STAGING = ".staging"
DEFAULT_NAME = "default"
_REF = re.compile(NAME_PATTERN[:-1] + r"(:" + VERSION_PATTERN[1:-1] + r")?$")


@dataclass(frozen=True)
class InstalledImage:
    """An image ready to boot: what the engine passes to QEMU."""

    name: str
    version: str
    directory: Path
    kernel: Path
    rootfs: Path
    initrd: Path | None
    cmdline: str
    manifest: ImageManifest

    @property
    def machine(self) -> str:
        """QEMU ``-M`` value this image's kernel needs (``microvm,acpi=off,rtc=on``…)."""
        return self.manifest.machine

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    if not _REF.match(ref):
        raise ImageNotFoundError(
            f"Invalid image reference {ref!r} (want NAME or NAME:VERSION)", image=ref)
    name, _, version = ref.partition(":")
    return name, version or None


def _unreadable(path: Path, err: OSError) -> ImageCacheUnreadableError:
    return ImageCacheUnreadableError(
        f"Cannot read the image catalogue at {path}: {err.strerror or err}",
        details={"path": str(path), "errno": err.errno},
    )


class ImageCatalog:
    """Installed images under ``paths.images`` (see the module docstring)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.root = paths.images

    # ------------------------------------------------------------------ reading
    def _listdir(self, path: Path) -> list[Path]:
        try:
            return sorted(p for p in path.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as err:  # PermissionError, NotADirectoryError…
            raise _unreadable(path, err) from None

    def _read_manifest(self, directory: Path) -> ImageManifest:
        try:
            manifest = ImageManifest.read(directory)
        except FileNotFoundError:
            raise ImageFileMissingError(
                f"Image directory {directory} has no {MANIFEST}",
                details={"path": str(directory / MANIFEST)}) from None
        except OSError as err:
            raise _unreadable(directory, err) from None
        if (manifest.name, manifest.version) != (directory.parent.name, directory.name):
            raise ImageCorruptError(
                f"Manifest in {directory} names {manifest.ref}", image=manifest.ref,
                details={"path": str(directory)})
        return manifest

    def list(self) -> list[ImageManifest]:
        """Every installed image, by name then newest first; damaged ones are skipped."""
        found: list[ImageManifest] = []
        for name_dir in self._listdir(self.root):
            if not name_dir.is_dir():
                continue
            for version_dir in self._listdir(name_dir):
                with contextlib.suppress(ImageCorruptError, ImageFileMissingError):
                    found.append(self._read_manifest(version_dir))
        found.sort(key=lambda m: m.created, reverse=True)
        found.sort(key=lambda m: m.name)
        return found

    def find(self, ref: str = DEFAULT_NAME) -> ImageManifest:
        """The manifest for ``ref`` (newest version when none is given), unverified."""
        name, version = parse_ref(ref)
        if version is not None:
            directory = self.root / name / version
            if not directory.is_dir():
                raise ImageNotFoundError(f"Image {ref} is not installed", image=ref)
            return self._read_manifest(directory)
        versions = [m for m in self.list() if m.name == name]
        if not versions:
            raise ImageNotFoundError(f"Image {name} is not installed", image=ref)
        return versions[0]

    def get(self, ref: str = DEFAULT_NAME) -> InstalledImage:
        """The image to boot for ``ref``, its files verified against the manifest."""
        manifest = self.find(ref)
        directory = self.root / manifest.name / manifest.version
        self.verify(directory, manifest)
        return InstalledImage(
            name=manifest.name, version=manifest.version, directory=directory,
            kernel=directory / manifest.kernel, rootfs=directory / manifest.rootfs,
            initrd=directory / manifest.initrd if manifest.initrd else None,
            cmdline=manifest.cmdline, manifest=manifest,
        )

    # ------------------------------------------------------------- verification
    def verify(self, directory: Path, manifest: ImageManifest, *, force: bool = False) -> None:
        """Check every file's size and SHA-256; skip files unchanged since their last check."""
        record_path = directory / VERIFIED
        try:
            record: dict[str, builtins.list[object]] = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        changed = False
        for name, expected in manifest.files.items():
            path = directory / name
            try:
                st = path.stat()
            except FileNotFoundError:
                raise ImageFileMissingError(
                    f"Image {manifest.ref} is missing its file {name}", image=manifest.ref,
                    details={"path": str(path)}) from None
            stamp: builtins.list[object] = [st.st_size, st.st_mtime_ns, expected.sha256]
            if not force and record.get(name) == stamp:
                continue
            actual = sha256_file(path) if st.st_size == expected.size else "size differs"
            if actual != expected.sha256:
                record.pop(name, None)
                self._save_record(record_path, record)
                raise ImageChecksumMismatchError(
                    f"Image {manifest.ref}: {name} does not match its manifest checksum",
                    image=manifest.ref,
                    details={"path": str(path), "expected": expected.sha256, "actual": actual,
                             "expected_size": expected.size, "size": st.st_size})
            record[name] = stamp
            changed = True
        if changed:
            self._save_record(record_path, record)

    @staticmethod
    def _save_record(path: Path, record: dict[str, builtins.list[object]]) -> None:
        """Best effort: a read-only catalogue only means hashing again next time."""
        with contextlib.suppress(OSError):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)

    # ------------------------------------------------------------------ writing
    def staging_dir(self) -> Path:
        """A fresh private directory on the catalogue's filesystem for one install.

        Named after the owning pid, so leftovers of a killed build are recognised
        (owner gone) and removed by the next caller.
        """
        staging = self.root / STAGING
        try:
            staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise _unreadable(self.root, err) from None
        for old in staging.iterdir():
            pid = old.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=staging))

    def install(self, image_dir: Path, manifest: ImageManifest, *,
                replace: bool = False) -> InstalledImage:
        """Move a finished ``image_dir`` (files + manifest) into place atomically."""
        for name in manifest.files:
            if os.stat(image_dir / name).st_mode & 0o222:
                os.chmod(image_dir / name, 0o444)
        (image_dir / MANIFEST).unlink(missing_ok=True)  # never write through a hard link
        manifest.write(image_dir)
        target = self.root / manifest.name / manifest.version
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():
            if not replace:
                raise ImageAlreadyExistsError(f"Image {manifest.ref} is already installed",
                                              image=manifest.ref)
            self._discard(target)
        try:
            os.rename(image_dir, target)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):  # lost a race to another install
                raise ImageAlreadyExistsError(f"Image {manifest.ref} is already installed",
                                              image=manifest.ref) from None
            raise ImageError(f"Cannot install image {manifest.ref}: {err.strerror}",
                             image=manifest.ref, details={"path": str(target)}) from None
        return self.get(manifest.ref)

    def remove(self, ref: str) -> builtins.list[str]:
        """Remove ``NAME:VERSION``, or every version of ``NAME``; returns removed refs."""
        name, version = parse_ref(ref)
        if version is None:
            refs = [m.ref for m in self.list() if m.name == name]
            if not refs and not (self.root / name).is_dir():
                raise ImageNotFoundError(f"Image {name} is not installed", image=ref)
            self._discard(self.root / name)
            return refs
        target = self.root / name / version
        if not target.is_dir():
            raise ImageNotFoundError(f"Image {ref} is not installed", image=ref)
        self._discard(target)
        with contextlib.suppress(OSError):
            (self.root / name).rmdir()  # only if no version is left
        return [ref]

    def _discard(self, directory: Path) -> None:
        """Rename out of sight first (atomic), then delete at leisure."""
        staging = self.staging_dir()
        os.rename(directory, staging / "trash")
        shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

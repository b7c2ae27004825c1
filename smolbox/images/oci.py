"""Unpack container images (``docker save`` tarballs, OCI layouts) into a root tree.

Why our own applier: layers must be applied in order with the OCI whiteout rules
(``.wh.NAME`` deletes NAME from lower layers, ``.wh..wh..opq`` empties a
directory of lower-layer content), and a hostile layer must not write outside
the tree: every path is resolved with :func:`resolve_in_root`, never through a
host symlink. A damaged archive (truncated tar, bad JSON, missing blob) is an
ImageCorruptError; an unsupported one an ImageFormatError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from smolbox.errors import ImageChecksumMismatchError, ImageCorruptError, ImageFormatError
from smolbox.images.rootpath import resolve_in_root

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_IS_ROOT = os.geteuid() == 0


class Reader(Protocol):
    """Named members of an image archive, whether a directory or a tar file."""

    def has(self, name: str) -> bool: ...

    def open(self, name: str) -> IO[bytes]: ...


class DirReader:
    """An OCI layout unpacked in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        try:
            return (self.root / name).open("rb")
        except OSError as err:
            raise ImageCorruptError(f"Image archive lacks {name}: {err.strerror}",
                                    details={"member": name}) from None


class TarReader:
    """A tar file (``docker save`` or an OCI layout in a tar); indexes all members once."""

    def __init__(self, archive: tarfile.TarFile, source: Path) -> None:
        self.archive = archive
        self.source = source
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError, OSError) as err:
            raise corrupt(source, err) from None
        self.members = {normalise(m.name): m for m in members if m.isfile()}

    def has(self, name: str) -> bool:
        return normalise(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(normalise(name))
        handle = self.archive.extractfile(member) if member else None
        if handle is None:
            raise ImageCorruptError(f"Image archive {self.source} lacks {name}",
                                    details={"member": name, "path": str(self.source)})
        return handle


def corrupt(source: Path, err: BaseException) -> ImageCorruptError:
    return ImageCorruptError(
        f"Image archive {source} is damaged (truncated or not a valid tar): {err}",
        details={"path": str(source), "reason": str(err)},
    )


def normalise(name: str) -> str:
    """Archive member name -> tree-relative path ('' for the root)."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


def _json(reader: Reader, name: str) -> Any:
    check_blob(reader, name)
    with reader.open(name) as handle:
        try:
            return json.load(handle)
        except (ValueError, tarfile.TarError, EOFError) as err:
            raise ImageCorruptError(f"Image archive member {name} is not valid JSON: {err}",
                                    details={"member": name}) from None


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest or "/" in digest:
        raise ImageCorruptError(f"Bad blob digest {digest!r}", details={"digest": digest})
    return f"blobs/{algorithm}/{hexdigest}"


def _pick(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The linux/amd64 entry of an index (or its only/first entry)."""
    if not manifests:
        raise ImageCorruptError("OCI index lists no manifests")
    for entry in manifests:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    return manifests[0]


def layer_names(reader: Reader) -> list[str]:
    """Layer members in application order (lowest first)."""
    if reader.has("manifest.json"):
        manifest = _json(reader, "manifest.json")
        if isinstance(manifest, list) and manifest and isinstance(manifest[0], dict):
            layers = manifest[0].get("Layers")
            if isinstance(layers, list) and all(isinstance(x, str) for x in layers):
                return layers
    if reader.has("oci-layout") and reader.has("index.json"):
        entry = _pick(_json(reader, "index.json").get("manifests") or [])
        for _depth in range(4):
            doc = _json(reader, _blob(entry["digest"]))
            if entry.get("mediaType") in INDEX_TYPES or "manifests" in doc:
                entry = _pick(doc.get("manifests") or [])
                continue
            names = []
            for layer in doc.get("layers", []):
                if "zstd" in layer.get("mediaType", ""):
                    raise ImageFormatError(
                        "zstd-compressed layers are not supported",
                        details={"mediaType": layer.get("mediaType")},
                        help="Re-save the image with gzip or uncompressed layers.")
                names.append(_blob(layer["digest"]))
            return names
        raise ImageCorruptError("OCI index nesting is too deep")
    raise ImageFormatError("Not a docker-save tarball or an OCI layout (no manifest found)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _whiteouts(layer: list[tarfile.TarInfo], tree: Path) -> None:
    """Deletions a layer makes to the layers below it."""
    for member in layer:
        name = normalise(member.name)
        parent, base = posixpath.split(name)
        if base == OPAQUE:
            directory = resolve_in_root(tree, parent)
            if directory.is_dir():
                for child in directory.iterdir():
                    _remove(child)
        elif base.startswith(WHITEOUT):
            _remove(resolve_in_root(tree, posixpath.join(parent, base[len(WHITEOUT):]),
                                    follow_last=False))


def _place(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, tree: Path) -> None:
    parent_name, base = posixpath.split(name)
    parent = resolve_in_root(tree, parent_name)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / base
    if member.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            _remove(target)
        target.mkdir(exist_ok=True)
    else:
        _remove(target)
        if member.isfile():
            source = archive.extractfile(member)
            assert source is not None
            with source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(resolve_in_root(tree, normalise(member.linkname), follow_last=False), target)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = 0o020000 if member.ischr() else 0o060000 if member.isblk() else 0o010000
            try:
                os.mknod(target, kind | member.mode, os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                return  # devices come from devtmpfs in the guest anyway
        else:
            return
    if _IS_ROOT:
        os.lchown(target, member.uid, member.gid)
    if not member.issym():
        os.chmod(target, member.mode & 0o7777)
        with contextlib.suppress(OSError):
            os.utime(target, (member.mtime, member.mtime))


def apply_layer(layer: IO[bytes], tree: Path, label: str) -> None:
    """Apply one layer (tar, optionally gzip/bzip2/xz compressed) onto ``tree``."""
    try:
        with tarfile.open(fileobj=layer, mode="r:*") as archive:
            members = archive.getmembers()
            _whiteouts(members, tree)
            for member in members:
                name = normalise(member.name)
                if name and not posixpath.basename(name).startswith(WHITEOUT):
                    _place(archive, member, name, tree)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ImageCorruptError(f"Layer {label} is damaged: {err}",
                                details={"layer": label, "reason": str(err)}) from None


@contextlib.contextmanager
def open_reader(source: Path) -> Iterator[Reader]:
    """A :class:`Reader` over a directory layout or a tar file."""
    if source.is_dir():
        yield DirReader(source)
        return
    try:
        archive = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by `with` below
    except (tarfile.ReadError, EOFError) as err:
        raise ImageFormatError(f"{source} is not a tar archive or OCI layout: {err}",
                               details={"path": str(source)}) from None
    with archive:
        yield TarReader(archive, source)


def check_blob(reader: Reader, name: str) -> None:
    """A content-addressed blob must hash to its name (the archive's checksum only pins
    the index of a layout directory, so each blob is checked on its own)."""
    parts = name.split("/")
    if len(parts) != 3 or parts[:2] != ["blobs", "sha256"]:
        return
    digest = hashlib.sha256()
    with reader.open(name) as handle:
        try:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        except (tarfile.TarError, EOFError) as err:
            raise ImageCorruptError(f"Blob {name} is damaged: {err}",
                                    details={"member": name}) from None
    if digest.hexdigest() != parts[2]:
        raise ImageChecksumMismatchError(
            f"Blob {name} does not match its digest",
            details={"member": name, "expected": parts[2], "actual": digest.hexdigest()})


def unpack_container_image(source: Path, tree: Path) -> int:
    """Apply every layer of the image at ``source`` onto ``tree``; returns the layer count."""
    tree.mkdir(parents=True, exist_ok=True)
    with open_reader(source) as reader:
        names = layer_names(reader)
        for name in names:
            check_blob(reader, name)
            with reader.open(name) as layer:
                apply_layer(layer, tree, name)
    return len(names)

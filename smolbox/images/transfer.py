"""Move images in and out of the catalogue: import (path, URL, container image), export.

Why checksums up front: an archive from elsewhere is untrusted until its SHA-256
matches what the user was told; for a smolbox archive every file is then checked
against its manifest again. Container images (``docker save``, OCI layout) become
bootable smolbox images: layers + guest files + the minimal kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import httpx

from smolbox.errors import (
    ImageChecksumMismatchError,
    ImageCorruptError,
    ImageDownloadError,
    ImageFileMissingError,
    ImageFormatError,
    ValidationError,
)
from smolbox.images import assemble
from smolbox.images.buildcache import log_path
from smolbox.images.catalog import ImageCatalog, InstalledImage
from smolbox.images.hashing import CHUNK, sha256_file, sha256_inputs
from smolbox.images.manifest import MANIFEST, NAME_PATTERN, ImageManifest
from smolbox.images.oci import open_reader, unpack_container_image
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.runner import run_step

DOWNLOAD_STEP = "download"
IMPORT_STEP = "import"
_SHA256 = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")


def normalise_sha256(value: str) -> str:
    """Accept ``HEX`` or ``sha256:HEX``; anything else is a ValidationError."""
    match = _SHA256.match(value.strip())
    if not match:
        raise ValidationError("--sha256 must be 64 hex digits (optionally 'sha256:' first)",
                              field="sha256", value=value)
    return match.group(2).lower()


def download(url: str, dest: Path, progress: Progress, *, timeout: float = 30.0) -> str:
    """Stream ``url`` into ``dest``; returns the SHA-256 of what was received."""
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code >= 400:
                raise ImageDownloadError(
                    f"Download of {url} failed: HTTP {response.status_code}",
                    details={"url": url, "status": response.status_code})
            total = int(response.headers.get("content-length") or 0) or None
            progress.start(DOWNLOAD_STEP, total)
            with dest.open("wb") as sink:
                for chunk in response.iter_bytes(CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    progress.advance(DOWNLOAD_STEP, response.num_bytes_downloaded)
    except httpx.HTTPError as err:
        raise ImageDownloadError(f"Download of {url} failed: {err}",
                                 details={"url": url, "reason": str(err)}) from None
    progress.finish(DOWNLOAD_STEP, f"{dest.stat().st_size >> 20} MiB")
    return digest.hexdigest()


def source_digest(source: Path) -> str:
    """SHA-256 the user pins: of the file, or of ``index.json`` for an OCI layout dir."""
    if source.is_dir():
        index = source / "index.json"
        if not index.is_file():
            raise ImageFormatError(f"{source} is a directory but not an OCI layout",
                                   details={"path": str(source)})
        return sha256_file(index)
    return sha256_file(source)


def detect(source: Path) -> str:
    """``smolbox`` (an exported image) or ``container`` (docker save / OCI layout)."""
    with open_reader(source) as reader:
        if reader.has(MANIFEST):
            with reader.open(MANIFEST) as handle:
                try:
                    doc = json.load(handle)
                except (ValueError, tarfile.TarError, EOFError) as err:
                    raise ImageCorruptError(f"{MANIFEST} in {source} is not JSON: {err}",
                                            details={"path": str(source)}) from None
            if isinstance(doc, dict) and "schema_version" in doc:
                return "smolbox"
            return "container"
        if reader.has("oci-layout"):
            return "container"
    raise ImageFormatError(f"{source}: not a smolbox image, docker-save tarball or OCI layout",
                           details={"path": str(source)})


def import_image(
    catalog: ImageCatalog, source: str | Path, sha256: str, *, name: str | None = None,
    progress: Progress | None = None,
) -> InstalledImage:
    """Import ``source`` (path or http(s) URL) after checking its SHA-256."""
    progress = progress or NullProgress()
    expected = normalise_sha256(sha256)
    if name is not None and not re.match(NAME_PATTERN, name):
        raise ValidationError(f"Invalid image name {name!r}", field="name", value=name)
    staging = catalog.staging_dir()
    try:
        text = str(source)
        if "://" in text:
            if not text.startswith(("http://", "https://")):
                raise ImageDownloadError(f"Unsupported URL scheme in {text!r} (http/https only)",
                                         details={"url": text})
            path = staging / "download"
            actual = download(text, path, progress)
        else:
            path = Path(source)
            if not path.exists():
                raise ImageFileMissingError(f"{path} does not exist", details={"path": str(path)})
            actual = source_digest(path)
        if actual != expected:
            raise ImageChecksumMismatchError(
                f"{text} has SHA-256 {actual}, expected {expected}",
                details={"path": text, "expected": expected, "actual": actual})
        kind = detect(path)
        if kind == "smolbox":
            return _import_archive(catalog, path, staging, name)
        return _import_container(catalog, path, actual, name or "imported", progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_archive(catalog: ImageCatalog, archive: Path, staging: Path,
                    name: str | None) -> InstalledImage:
    image_dir = staging / "image"
    image_dir.mkdir()
    log = staging / "import.log"
    try:
        run_step(["tar", "--no-same-owner", "-xf", str(archive), "-C", str(image_dir)],
                 log=log, step="extract", error=ImageCorruptError)
    except ImageCorruptError as err:
        raise ImageCorruptError(f"Image archive {archive} is damaged: "
                                f"{log.read_text(errors='replace')[-300:].strip()}",
                                details={"path": str(archive), **err.details}) from None
    manifest = ImageManifest.read(image_dir)
    present = {p.name for p in image_dir.iterdir()} - {MANIFEST}
    if present != set(manifest.files):
        raise ImageCorruptError(
            f"Archive files {sorted(present)} differ from its manifest {sorted(manifest.files)}",
            image=manifest.ref, details={"path": str(archive)})
    catalog.verify(image_dir, manifest, force=True)
    (image_dir / ".verified.json").unlink(missing_ok=True)
    if name is not None and name != manifest.name:
        manifest = manifest.model_copy(update={"name": name})
    return catalog.install(image_dir, manifest)


def _import_container(catalog: ImageCatalog, source: Path, digest: str, name: str,
                      progress: Progress) -> InstalledImage:
    from smolbox.images.builder import kernel_artifacts, stage_image

    build_root = catalog.paths.cache / "build"
    kernel = kernel_artifacts("minimal", build_root, progress)
    build: dict[str, object] = {
        "kernel": {"kind": kernel.kind, **kernel.inputs},
        "rootfs": {"container_sha256": digest},
        "guest": assemble.guest_digest(),
        "recipe": 1,
    }
    version = sha256_inputs(build)[:12]
    log = log_path(build_root, "image", f"{name}-{version}")
    log.write_text("")
    progress.start(IMPORT_STEP)

    def fill(tree: Path) -> None:
        layers = unpack_container_image(source, tree)
        progress.finish(IMPORT_STEP, f"{layers} layer(s) applied")

    return stage_image(catalog, name=name, version=version, kernel=kernel, tree_filler=fill,
                       build=build, log=log, progress=progress, guest_dir=assemble.GUEST_DIR)


def export_image(catalog: ImageCatalog, ref: str, dest: Path) -> str:
    """Write ``ref`` as a sparse tar at ``dest`` (atomically); returns its SHA-256."""
    image = catalog.get(ref)
    dest = dest.resolve()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    log = catalog.paths.cache / "build" / "logs" / "export.log"
    try:
        run_step(["tar", "--sparse", "--numeric-owner", "--owner=0", "--group=0", "-cf",
                  str(tmp), "-C", str(image.directory), MANIFEST, *sorted(image.manifest.files)],
                 log=log, step="export")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_file(dest)

"""``smolbox image pull URL --sha256 HEX``: a foreign raw or qcow2 disk into the catalogue.

Why each check has its own code: "the network broke" (IMAGE_DOWNLOAD_FAILED, retry),
"these are not the bytes you pinned" (IMAGE_CHECKSUM_MISMATCH, never boot them), "this
is not a disk we can boot" (IMAGE_FORMAT_UNKNOWN) and "qemu-img could not convert it"
(IMAGE_CONVERSION_FAILED) need different actions from the user.

The format comes from ``qemu-img info --output=json``; qemu-img calls anything it does
not recognise "raw", so a raw disk must also carry a partition table or an ext4
superblock. A qcow2 with a backing file is refused (it would read a host file named by
the download). The disk is converted to raw (the engine's overlays sit on raw bases),
booted with the smolbox minimal kernel (``root=`` the first partition of a partitioned
disk, else the disk), and installed atomically (staging dir + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from smolbox.errors import (
    HostToolMissingError,
    ImageAlreadyExistsError,
    ImageChecksumMismatchError,
    ImageConversionError,
    ImageDownloadError,
    ImageError,
    ImageFormatError,
)
from smolbox.images.catalog import ImageCatalog, InstalledImage
from smolbox.images.hashing import CHUNK, sha256_file
from smolbox.images.manifest import ImageFile, ImageManifest
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.transfer import download, normalise_sha256

DISK_FILE = "disk.raw"
KERNEL_FILE = "vmlinux"
SUPPORTED = ("raw", "qcow2")
#: the kernel command line of a pulled image; no ``init=``: the image's own init runs
PULLED_CMDLINE = "console=ttyS0 rw"
QEMU_IMG_TIMEOUT = 600.0


def _fetch(url: str, dest: Path, progress: Progress) -> str:
    """Copy ``url`` (http, https, file, or a path) to ``dest``; the SHA-256 received."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return download(url, dest, progress)
    if parsed.scheme not in ("file", ""):
        raise ImageDownloadError(f"Unsupported URL scheme '{parsed.scheme}' in {url}",
                                 details={"url": url},
                                 help="Use an http://, https:// or file:// URL, or a path.")
    source = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, dest.open("wb") as sink:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                sink.write(chunk)
                digest.update(chunk)
    except OSError as err:
        raise ImageDownloadError(f"Cannot read {source}: {err.strerror}",
                                 details={"url": url, "reason": str(err)}) from None
    return digest.hexdigest()


def _qemu_img(argv: list[str], error: type[ImageError], what: str) -> str:
    try:
        done = subprocess.run(["qemu-img", *argv], capture_output=True, text=True,
                              timeout=QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise HostToolMissingError("qemu-img", "qemu-utils") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: qemu-img did not finish in {QEMU_IMG_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise error(f"{what}: {done.stderr.strip()[-300:] or 'qemu-img failed'}",
                    details={"stderr": done.stderr[-2000:], "exit_code": done.returncode})
    return done.stdout


def _boot_signature(path: Path) -> str | None:
    """``partitioned`` (MBR/GPT), ``ext4`` (a bare filesystem) or None."""
    with path.open("rb") as handle:
        head = handle.read(2048)
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        return "ext4"
    if head[512:520] == b"EFI PART" or (len(head) >= 512 and head[510:512] == b"\x55\xaa"):
        return "partitioned"
    return None


def detect_format(path: Path) -> tuple[str, dict[str, Any]]:
    """The disk format qemu-img sees (raw or qcow2) and its info; else IMAGE_FORMAT_UNKNOWN."""
    out = _qemu_img(["info", "--output=json", str(path)], ImageFormatError,
                    f"Cannot detect the format of {path.name}")
    try:
        info: dict[str, Any] = json.loads(out)
    except ValueError:
        raise ImageFormatError(f"qemu-img info gave no JSON for {path.name}") from None
    kind = str(info.get("format", "?"))
    if kind not in SUPPORTED:
        raise ImageFormatError(f"Disk format '{kind}' is not supported (raw or qcow2)",
                               details={"format": kind})
    if kind == "qcow2" and (info.get("backing-filename") or info.get("full-backing-filename")):
        raise ImageFormatError("A qcow2 with a backing file is refused: it would read a host "
                               "file the image names", details={"format": kind,
                               "backing": info.get("backing-filename")},
                               help="Flatten it first: `qemu-img convert -O qcow2 in out`.")
    return kind, info


def _image_name(url: str, name: str | None) -> str:
    if name:
        return name
    stem = Path(urlparse(url).path).name.split(".")[0].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:40] or "pulled"


def pull_image(catalog: ImageCatalog, url: str, sha256: str, *, name: str | None = None,
               root: str | None = None, progress: Progress | None = None) -> InstalledImage:
    """Download, verify, detect, convert and install ``url`` as ``name:<sha256[:12]>``.

    ``root`` overrides the guest's root device (``/dev/vda1`` for a partitioned disk,
    ``/dev/vda`` for a bare ext4 otherwise). Pulling what is installed is a no-op.
    """
    from smolbox.images.builder import kernel_artifacts

    progress = progress or NullProgress()
    expected = normalise_sha256(sha256)
    name = _image_name(url, name)
    version = expected[:12]
    try:
        return catalog.get(f"{name}:{version}")
    except ImageError as err:
        if err.code != "IMAGE_NOT_FOUND":
            raise
    staging = catalog.staging_dir()
    try:
        fetched = staging / "download"
        actual = _fetch(url, fetched, progress)
        if actual != expected:
            raise ImageChecksumMismatchError(
                f"{url} has SHA-256 {actual}, expected {expected}", image=name,
                details={"url": url, "expected": expected, "actual": actual},
                help="Check the URL and the pinned --sha256; never boot unverified bytes.")
        kind, info = detect_format(fetched)
        image_dir = staging / "image"
        image_dir.mkdir()
        disk = image_dir / DISK_FILE
        if kind == "raw":
            os.rename(fetched, disk)
        else:
            _qemu_img(["convert", "-f", kind, "-O", "raw", str(fetched), str(disk)],
                      ImageConversionError, f"Converting {url} from {kind} to raw failed")
        signature = _boot_signature(disk)
        if signature is None:
            raise ImageFormatError(
                f"{url} is {kind} but holds neither a partition table nor an ext4 "
                "filesystem", image=name, details={"url": url, "format": kind})
        kernel = kernel_artifacts("minimal", catalog.paths.cache / "build", progress)
        shutil.copyfile(kernel.vmlinux, image_dir / KERNEL_FILE)
        root = root or ("/dev/vda1" if signature == "partitioned" else "/dev/vda")
        files = {}
        for path in sorted(image_dir.iterdir()):
            files[path.name] = ImageFile(size=path.stat().st_size, sha256=sha256_file(path))
        manifest = ImageManifest(
            name=name, version=version, kernel=KERNEL_FILE, kernel_kind="minimal",
            rootfs=DISK_FILE, rootfs_format="raw-disk",
            cmdline=f"{PULLED_CMDLINE} root={root}", machine=kernel.machine, files=files,
            build={"pulled_from": url, "sha256": expected, "format": kind,
                   "virtual_size": info.get("virtual-size"), "agent": False,
                   "kernel": {"kind": kernel.kind, **kernel.inputs}},
        )
        try:
            return catalog.install(image_dir, manifest)
        except ImageAlreadyExistsError:  # a concurrent pull installed the same bytes
            return catalog.get(manifest.ref)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Catalogue behaviour on real files: lookup, verification, errors, removal."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from smolbox.errors import (
    ImageAlreadyExistsError,
    ImageCacheUnreadableError,
    ImageChecksumMismatchError,
    ImageCorruptError,
    ImageError,
    ImageFileMissingError,
    ImageNotFoundError,
)
from smolbox.images import ImageCatalog, ImageManifest, InstalledImage
from smolbox.images.catalog import VERIFIED, parse_ref
from smolbox.paths import Paths

MakeImage = Callable[..., InstalledImage]


def test_get_returns_verified_image(make_image: MakeImage, catalog: ImageCatalog) -> None:
    made = make_image("small", "v1")
    got = catalog.get("small:v1")
    assert got.kernel.read_bytes() == b"K" * 1000
    assert got.rootfs == made.rootfs and got.initrd is None
    assert got.cmdline.startswith("console=ttyS0 root=/dev/vda rw init=/sbin/smolbox-init")
    assert got.manifest.files["rootfs.ext4"].size == 70000
    record = json.loads((got.directory / VERIFIED).read_text())
    assert set(record) == {"vmlinux", "rootfs.ext4"}
    assert not os.stat(got.rootfs).st_mode & 0o222, "installed files must be read-only"


def test_newest_version_wins_without_version(make_image: MakeImage,
                                             catalog: ImageCatalog) -> None:
    make_image("small", "old")
    make_image("small", "new")
    assert catalog.get("small").version == "new"
    assert [m.ref for m in catalog.list()] == ["small:new", "small:old"]


def test_corrupted_rootfs_is_checksum_mismatch(make_image: MakeImage,
                                               catalog: ImageCatalog) -> None:
    image = make_image()
    catalog.get(image.ref)  # verified and remembered
    os.chmod(image.rootfs, 0o644)
    with image.rootfs.open("r+b") as handle:
        handle.seek(1234)
        handle.write(b"X")
    with pytest.raises(ImageChecksumMismatchError) as info:
        catalog.get(image.ref)
    assert info.value.code == "IMAGE_CHECKSUM_MISMATCH"
    assert info.value.details["path"] == str(image.rootfs)
    assert "rebuild" in info.value.help


def test_truncated_rootfs_is_checksum_mismatch(make_image: MakeImage,
                                               catalog: ImageCatalog) -> None:
    image = make_image()
    os.chmod(image.rootfs, 0o644)
    os.truncate(image.rootfs, 100)
    with pytest.raises(ImageChecksumMismatchError):
        catalog.get(image.ref)


def test_verification_is_remembered_by_size_and_mtime(make_image: MakeImage,
                                                      catalog: ImageCatalog) -> None:
    """Same size + mtime is trusted (no re-hash); a forced verify still catches it."""
    image = make_image()
    catalog.get(image.ref)
    st = image.rootfs.stat()
    os.chmod(image.rootfs, 0o644)
    with image.rootfs.open("r+b") as handle:
        handle.write(b"Z")
    os.utime(image.rootfs, ns=(st.st_atime_ns, st.st_mtime_ns))
    catalog.get(image.ref)
    with pytest.raises(ImageChecksumMismatchError):
        catalog.verify(image.directory, image.manifest, force=True)


def test_missing_file(make_image: MakeImage, catalog: ImageCatalog) -> None:
    image = make_image()
    image.kernel.unlink()
    with pytest.raises(ImageFileMissingError) as info:
        catalog.get(image.ref)
    assert info.value.code == "IMAGE_FILE_MISSING"


def test_missing_manifest(make_image: MakeImage, catalog: ImageCatalog) -> None:
    image = make_image()
    (image.directory / "manifest.json").unlink()
    with pytest.raises(ImageFileMissingError):
        catalog.get(image.ref)


def test_damaged_manifest_is_corrupt(make_image: MakeImage, catalog: ImageCatalog) -> None:
    image = make_image()
    (image.directory / "manifest.json").write_text('{"name": "small"')
    with pytest.raises(ImageCorruptError) as info:
        catalog.get(image.ref)
    assert info.value.code == "IMAGE_CORRUPT"
    assert catalog.list() == []  # damaged images are skipped, not fatal


def test_manifest_must_list_its_kernel(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({
        "name": "x", "version": "1", "kernel": "vmlinux", "kernel_kind": "minimal",
        "rootfs": "rootfs.ext4", "cmdline": "c", "files": {}}))
    with pytest.raises(ImageCorruptError, match="not listed"):
        ImageManifest.read(tmp_path)


def test_not_found(catalog: ImageCatalog, make_image: MakeImage) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        catalog.get("default")
    assert info.value.code == "IMAGE_NOT_FOUND" and info.value.http_status == 404
    make_image("small", "v1")
    with pytest.raises(ImageNotFoundError):
        catalog.get("small:v2")
    with pytest.raises(ImageNotFoundError):
        parse_ref("Bad Name")


def test_install_refuses_duplicates(make_image: MakeImage) -> None:
    make_image("small", "v1")
    with pytest.raises(ImageAlreadyExistsError):
        make_image("small", "v1")


def test_remove_version_and_name(make_image: MakeImage, catalog: ImageCatalog) -> None:
    make_image("small", "v1")
    make_image("small", "v2")
    make_image("other", "v1")
    assert catalog.remove("small:v1") == ["small:v1"]
    assert [m.ref for m in catalog.list()] == ["other:v1", "small:v2"]
    assert catalog.remove("small") == ["small:v2"]
    assert not (catalog.root / "small").exists()
    assert [p.name for p in (catalog.root / ".staging").iterdir()] == []
    with pytest.raises(ImageNotFoundError):
        catalog.remove("small")


def test_catalogue_path_not_a_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("not a dir")
    catalog = ImageCatalog(Paths(home=tmp_path, images=tmp_path / "images",
                                 cache=tmp_path / "c", run=tmp_path / "r"))
    with pytest.raises(ImageCacheUnreadableError) as info:
        catalog.list()
    assert info.value.code == "IMAGE_CACHE_UNREADABLE"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_catalogue_is_unreadable(tmp_path: Path) -> None:
    """Real permissions: a forked child running as nobody may not read the catalogue."""
    images = tmp_path / "images"
    (images / "x" / "1").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    os.chmod(images, 0o700)  # root-only
    catalog = ImageCatalog(Paths(home=tmp_path, images=images, cache=tmp_path / "c",
                                 run=tmp_path / "r"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report the error code through the pipe
        result = b"no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            catalog.list()
        except ImageError as err:
            result = err.code.encode()
        except BaseException as err:
            result = repr(err).encode()
        os.write(write_end, result)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    assert answer == "IMAGE_CACHE_UNREADABLE"


def test_an_install_the_file_system_refuses_is_an_image_error(catalog: ImageCatalog) -> None:
    """A finished image on another file system cannot be renamed into place (EXDEV):
    the catalogue says so, with the target, and installs nothing."""
    if os.stat("/dev/shm").st_dev == os.stat(catalog.root.parent).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    import shutil
    import tempfile

    from smolbox.images import ImageFile
    from smolbox.images.hashing import sha256_file
    from smolbox.images.manifest import BASE_CMDLINE

    elsewhere = Path(tempfile.mkdtemp(prefix="sbt-img-", dir="/dev/shm"))
    try:
        image_dir = elsewhere / "image"
        image_dir.mkdir()
        (image_dir / "vmlinux").write_bytes(b"K" * 100)
        (image_dir / "rootfs.ext4").write_bytes(b"R" * 100)
        files = {p.name: ImageFile(size=p.stat().st_size, sha256=sha256_file(p))
                 for p in image_dir.iterdir()}
        manifest = ImageManifest(name="small", version="v1", kernel="vmlinux",
                                 kernel_kind="minimal", rootfs="rootfs.ext4",
                                 cmdline=BASE_CMDLINE, files=files, build={"test": True})
        with pytest.raises(ImageError) as info:
            catalog.install(image_dir, manifest)
        assert type(info.value) is ImageError and info.value.code == "IMAGE_ERROR"
        assert "Cannot install image small:v1" in info.value.message
        assert catalog.list() == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)

"""Fixtures for image tests: an isolated catalogue and small real images in it.

The small images are real files (a fake kernel blob, a tiny ext4-sized blob)
installed through the real catalogue code; only booting needs the real kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from smolbox.images import ImageCatalog, ImageFile, ImageManifest, InstalledImage
from smolbox.images.hashing import sha256_file
from smolbox.images.manifest import BASE_CMDLINE
from smolbox.paths import Paths

MakeImage = Callable[..., InstalledImage]


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(home=tmp_path / "home", images=tmp_path / "home" / "images",
              cache=tmp_path / "cache", run=tmp_path / "run")
    p.ensure(p.home, p.images, p.cache)
    return p


@pytest.fixture
def catalog(paths: Paths) -> ImageCatalog:
    return ImageCatalog(paths)


@pytest.fixture
def make_image(catalog: ImageCatalog) -> MakeImage:
    """Install a small image with real files: ``make_image("name", "v1")``."""

    def make(name: str = "small", version: str = "v1", rootfs: bytes = b"R" * 70000,
             kernel: bytes = b"K" * 1000) -> InstalledImage:
        image_dir = catalog.staging_dir() / "image"
        image_dir.mkdir()
        (image_dir / "vmlinux").write_bytes(kernel)
        (image_dir / "rootfs.ext4").write_bytes(rootfs)
        files = {p.name: ImageFile(size=p.stat().st_size, sha256=sha256_file(p))
                 for p in image_dir.iterdir()}
        manifest = ImageManifest(name=name, version=version, kernel="vmlinux",
                                 kernel_kind="minimal", rootfs="rootfs.ext4",
                                 cmdline=BASE_CMDLINE, files=files, build={"test": True})
        installed = catalog.install(image_dir, manifest)
        image_dir.parent.rmdir()
        return installed

    return make

"""The built default image boots under QEMU (TCG) and its init reports readiness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smolbox.images import ImageCatalog, InstalledImage
from smolbox.images.bootcheck import boot_until_ready
from smolbox.images.kernel import verify_config
from smolbox.paths import Paths


@pytest.mark.vm
def test_default_image_boots_to_ready(default_image: InstalledImage) -> None:
    """Acceptance: SMOLBOX_READY on the console within 5 s of spawning QEMU."""
    before = {p for p in Path("/tmp").glob("sbx-boot-*")}
    elapsed = boot_until_ready(default_image, timeout=5.0)
    assert elapsed > 0
    assert {p for p in Path("/tmp").glob("sbx-boot-*")} == before, "overlay dir leaked"
    # the overlay never touched the installed rootfs
    ImageCatalog(Paths.from_env()).verify(default_image.directory, default_image.manifest,
                                          force=True)


@pytest.mark.vm
def test_default_image_manifest(default_image: InstalledImage) -> None:
    manifest = default_image.manifest
    assert manifest.name == "default" and manifest.kernel_kind == "minimal"
    assert "init=/sbin/smolbox-init" in default_image.cmdline
    assert default_image.machine == "microvm,acpi=off,rtc=on"
    assert not os.access(default_image.rootfs, os.W_OK) or os.geteuid() == 0
    assert not os.stat(default_image.rootfs).st_mode & 0o222
    # the cached kernel really has every option the fragment asks for
    kernel_dir = Paths.from_env().cache / "build" / f"kernel-{manifest.build['kernel']['key']}"
    verify_config(kernel_dir / "config")


@pytest.mark.vm
def test_warm_default_image_is_reused(default_image: InstalledImage) -> None:
    from smolbox.images.testing import ensure_default_image

    again = ensure_default_image(Paths.from_env())
    assert again.ref == default_image.ref and again.directory == default_image.directory


@pytest.mark.vm
@pytest.mark.slow
def test_debian_kernel_image_boots(tmp_path: Path) -> None:
    """Second kernel choice: Debian's cloud kernel + initramfs, ACPI microvm."""
    shared = Paths.from_env()
    paths = Paths(home=tmp_path, images=tmp_path / "images", cache=shared.cache,
                  run=tmp_path / "run")
    catalog = ImageCatalog(paths)
    image = catalog.build(name="deb", kernel="debian")
    assert image.initrd is not None and image.machine == "microvm,acpi=on,rtc=on"
    assert "tsc_early_khz=" in image.cmdline
    boot_until_ready(image, timeout=15.0)

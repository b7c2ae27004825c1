"""Build an image end to end: kernel + base rootfs (cached) + guest files -> catalogue.

Why the version is a hash of inputs: the same kernel, base and guest files always
give the same version, so "is the image up to date?" is one directory lookup
(the warm path of ``ensure_default_image`` takes milliseconds), while any change
of the agent yields a new version that machines pinned to the old one keep using.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smolbox.errors import ImageError
from smolbox.images import assemble
from smolbox.images.buildcache import log_path
from smolbox.images.catalog import DEFAULT_NAME, ImageCatalog, InstalledImage
from smolbox.images.hashing import sha256_file, sha256_inputs
from smolbox.images.kernel import BuiltKernel, build_minimal_kernel
from smolbox.images.manifest import BASE_CMDLINE, MINIMAL_MACHINE, ImageFile, ImageManifest
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.rootfs import build_base_rootfs

KernelKind = Literal["minimal", "debian"]
KERNEL_FILE = "vmlinux"
INITRD_FILE = "initrd.img"
ROOTFS_FILE = "rootfs.ext4"
ASSEMBLE_STEP = "assemble rootfs"


@dataclass(frozen=True)
class KernelArtifacts:
    """What a kernel provider hands to the image: files plus cmdline additions."""

    vmlinux: Path
    kind: KernelKind
    inputs: dict[str, object]
    initrd: Path | None = None
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)
    machine: str = MINIMAL_MACHINE


def kernel_artifacts(kind: KernelKind, build_root: Path, progress: Progress) -> KernelArtifacts:
    """Build or reuse the kernel of ``kind``."""
    if kind == "debian":
        from smolbox.images.debian_kernel import build_debian_kernel

        return build_debian_kernel(build_root, progress)
    built: BuiltKernel = build_minimal_kernel(build_root, progress)
    return KernelArtifacts(vmlinux=built.vmlinux, kind="minimal",
                           inputs={"key": built.key, "source": built.inputs["source_package"]})


def stage_image(
    catalog: ImageCatalog, *, name: str, version: str, kernel: KernelArtifacts,
    tree_filler: Callable[[Path], None], build: dict[str, object], log: Path, progress: Progress,
    guest_dir: Path,
) -> InstalledImage:
    """Assemble ``tree`` via ``tree_filler(tree)``, add guest files, mkfs, install."""
    staging = catalog.staging_dir()
    try:
        tree, image_dir = staging / "tree", staging / "image"
        image_dir.mkdir()
        progress.start(ASSEMBLE_STEP)
        tree_filler(tree)
        assemble.install_guest(tree, guest_dir)
        assemble.make_ext4(tree, image_dir / ROOTFS_FILE, log=log)
        shutil.rmtree(tree)
        shutil.copyfile(kernel.vmlinux, image_dir / KERNEL_FILE)
        if kernel.initrd is not None:
            shutil.copyfile(kernel.initrd, image_dir / INITRD_FILE)
        files = {p.name: ImageFile(size=p.stat().st_size, sha256=sha256_file(p))
                 for p in sorted(image_dir.iterdir())}
        manifest = ImageManifest(
            name=name, version=version, kernel=KERNEL_FILE, kernel_kind=kernel.kind,
            rootfs=ROOTFS_FILE, initrd=INITRD_FILE if kernel.initrd else None,
            cmdline=" ".join([BASE_CMDLINE, *kernel.cmdline_extra]), machine=kernel.machine,
            files=files, build=build,
        )
        installed = catalog.install(image_dir, manifest)
        progress.finish(ASSEMBLE_STEP, f"{installed.ref} installed")
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_image(
    catalog: ImageCatalog, *, name: str = DEFAULT_NAME, kernel: KernelKind = "minimal",
    packages: tuple[str, ...] = (), progress: Progress | None = None,
    guest_dir: Path = assemble.GUEST_DIR, rebuild: bool = False,
) -> InstalledImage:
    """Build (or find already built) the image ``name`` from Debian + the guest files."""
    progress = progress or NullProgress()
    build_root = catalog.paths.cache / "build"
    kern = kernel_artifacts(kernel, build_root, progress)
    base = build_base_rootfs(build_root, packages, progress)
    build: dict[str, object] = {
        "kernel": {"kind": kern.kind, **kern.inputs, "cmdline": list(kern.cmdline_extra)},
        "rootfs": {"key": base.key, **base.inputs},
        "guest": assemble.guest_digest(guest_dir),
        "recipe": 1,
    }
    version = sha256_inputs(build)[:12]
    if not rebuild:
        try:
            return catalog.get(f"{name}:{version}")
        except ImageError as err:
            if err.code != "IMAGE_NOT_FOUND":
                raise
    log = log_path(build_root, "image", f"{name}-{version}")
    log.write_text("")

    def fill(tree: Path) -> None:
        assemble.extract_tarball(base.tarball, tree, log=log)

    if rebuild and (catalog.root / name / version).is_dir():
        catalog.remove(f"{name}:{version}")
    return stage_image(catalog, name=name, version=version, kernel=kern, tree_filler=fill,
                       build=build, log=log, progress=progress, guest_dir=guest_dir)

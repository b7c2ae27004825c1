"""Build an image end to end: kernel + base rootfs (cached) + guest files -> catalogue.

Why the version is a hash of inputs: the same kernel, base and guest files always
give the same version, so "is the image up to date?" is one directory lookup
(the warm path of ``ensure_default_image`` takes milliseconds), while any change
of the agent yields a new version that machines pinned to the old one keep using.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from smolbox.errors import ImageAlreadyExistsError, ImageBuildError, ImageError
from smolbox.images import assemble
from smolbox.images.buildcache import cache_entry, ensure_built, log_path, prune
from smolbox.images.catalog import DEFAULT_NAME, VERIFIED, ImageCatalog, InstalledImage
from smolbox.images.hashing import sha256_file, sha256_inputs
from smolbox.images.kernel import BuiltKernel, KernelArtifacts, KernelKind, build_minimal_kernel
from smolbox.images.manifest import BASE_CMDLINE, ImageFile, ImageManifest
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.rootfs import build_base_rootfs
from smolbox.images.runner import run_step

KERNEL_FILE = "vmlinux"
INITRD_FILE = "initrd.img"
ROOTFS_FILE = "rootfs.ext4"
ASSEMBLE_STEP = "assemble rootfs"
CACHED_IMAGES = 4  # assembled images kept in the build cache (one per guest-agent change)


def kernel_artifacts(kind: KernelKind, build_root: Path, progress: Progress) -> KernelArtifacts:
    """Build or reuse the kernel of ``kind``."""
    if kind == "debian":
        from smolbox.images.debian_kernel import build_debian_kernel

        return build_debian_kernel(build_root, progress)
    built: BuiltKernel = build_minimal_kernel(build_root, progress)
    return KernelArtifacts(vmlinux=built.vmlinux, kind="minimal",
                           inputs={"key": built.key, "source": built.inputs["source_package"]})


def assemble_image(
    out: Path, work: Path, *, name: str, version: str, kernel: KernelArtifacts,
    tree_filler: Callable[[Path], None], build: dict[str, object], log: Path,
    progress: Progress, guest_dir: Path,
) -> ImageManifest:
    """Fill ``out`` with the image files, ``manifest.json`` and a verification record.

    ``tree_filler(tree)`` lays down the userland in ``work/tree``; the guest files
    and ``mkfs.ext4 -d`` follow. The record lets the first ``get`` skip re-hashing
    files whose hashes were computed right here.
    """
    tree = work / "tree"
    progress.start(ASSEMBLE_STEP)
    tree_filler(tree)
    assemble.install_guest(tree, guest_dir)
    assemble.make_ext4(tree, out / ROOTFS_FILE, log=log)
    shutil.rmtree(tree)
    shutil.copyfile(kernel.vmlinux, out / KERNEL_FILE)
    if kernel.initrd is not None:
        shutil.copyfile(kernel.initrd, out / INITRD_FILE)
    files = {}
    for path in sorted(out.iterdir()):
        os.chmod(path, 0o444)
        files[path.name] = ImageFile(size=path.stat().st_size, sha256=sha256_file(path))
    manifest = ImageManifest(
        name=name, version=version, kernel=KERNEL_FILE, kernel_kind=kernel.kind,
        rootfs=ROOTFS_FILE, initrd=INITRD_FILE if kernel.initrd else None,
        cmdline=" ".join([BASE_CMDLINE, *kernel.cmdline_extra]), machine=kernel.machine,
        files=files, build=build,
    )
    manifest.write(out)
    write_verified(out, manifest)
    progress.finish(ASSEMBLE_STEP, f"{manifest.ref} assembled")
    return manifest


def write_verified(directory: Path, manifest: ImageManifest) -> None:
    """Record (size, mtime, sha256) of files whose hashes are known to be right."""
    record = {}
    for file_name, info in manifest.files.items():
        st = (directory / file_name).stat()
        record[file_name] = [st.st_size, st.st_mtime_ns, info.sha256]
    (directory / VERIFIED).write_text(json.dumps(record))


def stage_image(
    catalog: ImageCatalog, *, name: str, version: str, kernel: KernelArtifacts,
    tree_filler: Callable[[Path], None], build: dict[str, object], log: Path,
    progress: Progress, guest_dir: Path,
) -> InstalledImage:
    """Assemble an image in the catalogue's staging area and install it atomically."""
    staging = catalog.staging_dir()
    try:
        image_dir = staging / "image"
        image_dir.mkdir()
        manifest = assemble_image(image_dir, staging, name=name, version=version,
                                  kernel=kernel, tree_filler=tree_filler, build=build,
                                  log=log, progress=progress, guest_dir=guest_dir)
        return catalog.install(image_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_cached(catalog: ImageCatalog, entry: Path, name: str) -> InstalledImage:
    """Install a cached assembled image: data files hard-linked (or sparse-copied
    across filesystems), manifest and verification record written fresh."""
    manifest = ImageManifest.read(entry)
    if manifest.name != name:
        manifest = manifest.model_copy(update={"name": name})
    staging = catalog.staging_dir()
    try:
        image_dir = staging / "image"
        image_dir.mkdir()
        for file_name in manifest.files:
            try:
                os.link(entry / file_name, image_dir / file_name)
            except OSError:
                run_step(["cp", "--sparse=always", "--preserve=timestamps",
                          str(entry / file_name), str(image_dir / file_name)],
                         log=staging / "copy.log", step="copy image")
        if (entry / VERIFIED).is_file():
            shutil.copyfile(entry / VERIFIED, image_dir / VERIFIED)
        try:
            return catalog.install(image_dir, manifest)
        except ImageAlreadyExistsError:  # a concurrent build installed the same version
            return catalog.get(manifest.ref)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_image(
    catalog: ImageCatalog, *, name: str = DEFAULT_NAME, kernel: KernelKind = "minimal",
    packages: tuple[str, ...] = (), progress: Progress | None = None,
    guest_dir: Path = assemble.GUEST_DIR, rebuild: bool = False,
) -> InstalledImage:
    """Build (or find already built) the image ``name`` from Debian + the guest files."""
    if kernel not in ("minimal", "debian"):
        raise ImageBuildError(f"Unknown kernel kind {kernel!r} (minimal or debian)",
                              details={"kernel": kernel})
    progress = progress or NullProgress()
    build_root = catalog.paths.cache / "build"
    kern = kernel_artifacts(kernel, build_root, progress)
    base = build_base_rootfs(build_root, packages, progress)
    build: dict[str, object] = {
        "kernel": {"kind": kern.kind, **kern.inputs, "cmdline": list(kern.cmdline_extra)},
        "rootfs": {"key": base.key, **base.inputs},
        "guest": assemble.guest_digest(guest_dir),
        "recipe": 2,  # 2: the default user `user` (images/users.py)
    }
    version = sha256_inputs(build)[:12]
    if not rebuild:
        try:
            return catalog.get(f"{name}:{version}")
        except ImageError as err:
            if err.code != "IMAGE_NOT_FOUND":
                raise
    log = log_path(build_root, "image", version)

    def fill(tree: Path) -> None:
        assemble.extract_tarball(base.tarball, tree, log=log)

    def produce(out: Path, work: Path) -> None:
        log.write_text("")
        assemble_image(out, work, name=name, version=version, kernel=kern, tree_filler=fill,
                       build=build, log=log, progress=progress, guest_dir=guest_dir)

    if rebuild:
        if (catalog.root / name / version).is_dir():
            catalog.remove(f"{name}:{version}")
        shutil.rmtree(cache_entry(build_root, "image", version), ignore_errors=True)
    # The assembled image is cached too: a fresh catalogue (a new test session, a
    # new SMOLBOX_HOME) installs it by hard links in milliseconds.
    entry = ensure_built(build_root, "image", version, produce)
    installed = install_cached(catalog, entry, name)
    prune(build_root, "image", keep=CACHED_IMAGES)
    return installed

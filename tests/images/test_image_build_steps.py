"""Build plumbing without the heavy parts: steps, cache entries, interruption, config checks."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from smolbox.errors import HostToolMissingError, ImageBuildError, RootfsError
from smolbox.images import ImageCatalog
from smolbox.images.apt_sources import sources_for
from smolbox.images.assemble import GUEST_DIR
from smolbox.images.buildcache import ensure_built
from smolbox.images.builder import stage_image
from smolbox.images.kernel import (
    FRAGMENT,
    KernelArtifacts,
    config_mismatches,
    verify_config,
    wanted_options,
)
from smolbox.images.progress import NullProgress
from smolbox.images.rootfs import validate_packages
from smolbox.images.runner import run_step


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_failed_step_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    with pytest.raises(ImageBuildError) as info:
        run_step(["sh", "-c", "echo compiling; echo broken >&2; exit 3"], log=log, step="demo")
    err = info.value
    assert err.code == "IMAGE_BUILD_FAILED" and err.details["exit_code"] == 3
    assert err.details["log"] == str(log) and str(log) in err.message
    assert "compiling" in log.read_text() and "broken" in log.read_text()


def test_missing_tool(tmp_path: Path) -> None:
    with pytest.raises(HostToolMissingError):
        run_step(["smolbox-no-such-tool"], log=tmp_path / "l", step="x")


def test_interrupted_step_kills_its_process_group(tmp_path: Path) -> None:
    pids: list[int] = []

    def on_line(_n: int, line: str) -> None:
        pids.append(int(line))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_step(["sh", "-c", "sleep 60 & echo $!; wait"], log=tmp_path / "l", step="x",
                 on_line=on_line)
    deadline = time.monotonic() + 5
    while not _gone(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(pids[0]), "the step's background child survived"


def test_kernel_fragment_requires_the_boot_essentials() -> None:
    wanted = wanted_options()
    for option in ("CONFIG_PVH", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_BLK",
                   "CONFIG_VIRTIO_CONSOLE", "CONFIG_EXT4_FS", "CONFIG_BINFMT_SCRIPT",
                   "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_DEVTMPFS_MOUNT", "CONFIG_UNIX98_PTYS",
                   "CONFIG_NO_HZ_IDLE", "CONFIG_VIRTIO_FS", "CONFIG_SECCOMP_FILTER"):
        assert wanted[option] is True, option
    assert wanted["CONFIG_MODULES"] is False and wanted["CONFIG_PCI"] is False


def test_dropped_options_fail_the_build(tmp_path: Path) -> None:
    """tinyconfig drops options silently: the check must list each one."""
    lines = [f"{name}=y" for name, on in wanted_options().items() if on]
    lines = [line for line in lines if not line.startswith(("CONFIG_PVH=", "CONFIG_VIRTIO_FS="))]
    lines.append("CONFIG_MODULES=y")
    config = tmp_path / ".config"
    config.write_text("\n".join(lines) + "\n")
    assert config_mismatches(config, wanted_options()) == [
        "CONFIG_MODULES (want n, got y)", "CONFIG_PVH (want y, got n)",
        "CONFIG_VIRTIO_FS (want y, got n)"]
    with pytest.raises(ImageBuildError) as info:
        verify_config(config, FRAGMENT)
    assert len(info.value.details["missing"]) == 3


def test_apt_sources_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://mirror.test/debian bookworm main contrib\n"
        "deb-src http://mirror.test/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "sec.sources").write_text(
        "Types: deb\nURIs: http://sec.test/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://off.test\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n")
    assert [s.line() for s in sources_for("bookworm", tmp_path)] == [
        "deb http://mirror.test/debian bookworm main",
        "deb http://sec.test/debian-security bookworm-security main"]
    with pytest.raises(RootfsError):
        sources_for("trixie", tmp_path)


def test_package_names_are_checked() -> None:
    assert validate_packages(("git", "curl", "git")) == ("curl", "git")
    with pytest.raises(RootfsError):
        validate_packages(("git; rm -rf /",))


def test_failed_cache_build_leaves_no_entry(tmp_path: Path) -> None:
    def broken(out: Path, _work: Path) -> None:
        (out / "half").write_text("x")
        raise ImageBuildError("boom")

    with pytest.raises(ImageBuildError):
        ensure_built(tmp_path, "thing", "k1", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing-k1.lock"]
    def good(out: Path, _work: Path) -> None:
        (out / "ok").write_text("y")

    entry = ensure_built(tmp_path, "thing", "k1", good)
    assert (entry / "ok").read_text() == "y"
    calls: list[int] = []
    ensure_built(tmp_path, "thing", "k1", lambda _o, _w: calls.append(1))
    assert calls == [], "a cached entry is reused, not rebuilt"


def _tree_with_python(tree: Path) -> None:
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/python3").write_text("#!fake\n")
    (tree / "etc").mkdir()


def _kernel(tmp_path: Path) -> KernelArtifacts:
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF fake kernel for a catalogue-only test")
    return KernelArtifacts(vmlinux=vmlinux, kind="minimal", inputs={})


def test_stage_image_installs_guest_files(catalog: ImageCatalog, tmp_path: Path) -> None:
    image = stage_image(catalog, name="t", version="1", kernel=_kernel(tmp_path),
                        tree_filler=_tree_with_python, build={}, log=tmp_path / "log",
                        progress=NullProgress(), guest_dir=GUEST_DIR)
    assert image.rootfs.stat().st_size > 1 << 30, "rootfs needs ~1 GiB free space"
    assert image.rootfs.stat().st_blocks * 512 < 64 << 20, "and stays sparse"
    import subprocess

    listing = subprocess.run(["debugfs", "-R", "ls -l /opt/smolbox/smolbox/guest",
                              str(image.rootfs)], capture_output=True, text=True, check=True)
    assert "init.py" in listing.stdout
    init = subprocess.run(["debugfs", "-R", "cat /sbin/smolbox-init", str(image.rootfs)],
                          capture_output=True, text=True, check=True)
    assert init.stdout.startswith("#!/usr/bin/python3 -I")


def test_interrupted_build_leaves_catalogue_unchanged(catalog: ImageCatalog,
                                                      make_image: object,
                                                      tmp_path: Path) -> None:
    """Raise mid-build, then SIGKILL a build process mid-way: nothing half-installed."""
    make_image("small", "v1")  # type: ignore[operator]
    before = [m.ref for m in catalog.list()]

    def raising(tree: Path) -> None:
        _tree_with_python(tree)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage_image(catalog, name="t", version="1", kernel=_kernel(tmp_path),
                    tree_filler=raising, build={}, log=tmp_path / "log",
                    progress=NullProgress(), guest_dir=GUEST_DIR)
    assert [m.ref for m in catalog.list()] == before
    assert list((catalog.root / ".staging").iterdir()) == []

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a real build process, killed while it holds a half-built tree
        def stuck(tree: Path) -> None:
            _tree_with_python(tree)
            os.write(write_end, b"ready")
            time.sleep(60)

        try:
            stage_image(catalog, name="t", version="2", kernel=_kernel(tmp_path),
                        tree_filler=stuck, build={}, log=tmp_path / "log",
                        progress=NullProgress(), guest_dir=GUEST_DIR)
        finally:
            os._exit(1)
    os.close(write_end)
    assert os.read(read_end, 5) == b"ready"
    os.close(read_end)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert [m.ref for m in catalog.list()] == before
    leftovers = list((catalog.root / ".staging").iterdir())
    assert len(leftovers) == 1, "the killed build's staging dir is the only trace"
    catalog.staging_dir().rmdir()  # the next install cleans up the dead build's staging
    assert list((catalog.root / ".staging").iterdir()) == []


def test_concurrent_installs_of_one_version(catalog: ImageCatalog, tmp_path: Path) -> None:
    """Two processes assembling the same version: one wins, the other reuses it."""
    from smolbox.images.builder import assemble_image, install_cached

    entry = tmp_path / "entry"
    entry.mkdir()
    assemble_image(entry, tmp_path, name="t", version="1", kernel=_kernel(tmp_path),
                   tree_filler=_tree_with_python, build={}, log=tmp_path / "log",
                   progress=NullProgress(), guest_dir=GUEST_DIR)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                install_cached(catalog, entry, "t")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert statuses == [0, 0]
    assert [m.ref for m in catalog.list()] == ["t:1"]
    assert catalog.get("t:1").rootfs.stat().st_ino == (entry / "rootfs.ext4").stat().st_ino


def test_prune_keeps_newest_and_skips_locked(tmp_path: Path) -> None:
    import fcntl

    from smolbox.images.buildcache import prune

    for n in range(4):
        entry = tmp_path / f"image-v{n}"
        entry.mkdir()
        (entry / "f").write_text(str(n))
        os.utime(entry, (1_000 + n, 1_000 + n))
    with (tmp_path / ".image-v0.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # v0 is being installed right now
        removed = prune(tmp_path, "image", keep=2)
    assert [p.name for p in removed] == ["image-v1"]
    assert sorted(p.name for p in tmp_path.glob("image-*")) == ["image-v0", "image-v2",
                                                                "image-v3"]

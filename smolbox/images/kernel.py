"""Build the minimal guest kernel from Debian's ``linux-source-6.1`` package.

Why our own kernel: Debian's cloud kernel needs an initramfs to load its virtio
modules and boots in ~3.5 s under TCG; ``tinyconfig`` plus the fragment in
``kernel/smolbox.config`` boots to a shell in under 1 s. The output is the
uncompressed ``vmlinux`` (QEMU boots it through the PVH entry on ``-M microvm``).

``tinyconfig`` silently drops options whose dependencies are missing, so the
merged ``.config`` is checked against every option the fragment asks for, both
before compiling (to fail in seconds, not minutes) and after.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smolbox.errors import HostToolMissingError, ImageBuildError
from smolbox.images.buildcache import ensure_built, log_path
from smolbox.images.hashing import sha256_inputs
from smolbox.images.manifest import MINIMAL_MACHINE
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.runner import run_step

KernelKind = Literal["minimal", "debian"]


@dataclass(frozen=True)
class KernelArtifacts:
    """What a kernel provider hands to the image: files plus cmdline additions."""

    vmlinux: Path
    kind: KernelKind
    inputs: dict[str, object]
    initrd: Path | None = None
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)
    machine: str = MINIMAL_MACHINE



FRAGMENT = Path(__file__).parent / "kernel" / "smolbox.config"
SOURCE_PACKAGE = "linux-source-6.1"
RECIPE = 1  # bump when the build steps below change in a way that changes the output
STEP = "kernel build"
# Lines of `make vmlinux` output for the fragment (measured): drives the progress
# bar (1639 lines for 6.1.192; ~5 minutes on 2 idle cores, 8 under load).
EXPECTED_MAKE_LINES = 1640

_OPTION_ON = re.compile(r"^(CONFIG_\w+)=y\s*$")
_OPTION_OFF = re.compile(r"^# (CONFIG_\w+) is not set\s*$")


@dataclass(frozen=True)
class KernelSource:
    """The installed Debian kernel source package."""

    package: str
    version: str
    tarball: Path


@dataclass(frozen=True)
class BuiltKernel:
    """A cached kernel build: ``vmlinux`` plus the ``.config`` it was built from."""

    vmlinux: Path
    config: Path
    key: str
    inputs: dict[str, str]


def find_source(package: str = SOURCE_PACKAGE) -> KernelSource:
    """Locate the source tarball through dpkg, so no path is assumed."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}\\n${db:Status-Status}\\n", package],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError:
        raise HostToolMissingError("dpkg-query", "dpkg") from None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) < 2 or lines[1] != "installed":
        raise HostToolMissingError(
            package, package, message=f"The kernel source package {package} is not installed",
            help=f"Install it: apt-get install {package} (or run scripts/install.sh).",
        )
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    tarballs = [Path(p) for p in listing.stdout.split() if re.search(r"\.tar\.(xz|bz2|gz)$", p)]
    if not tarballs or not tarballs[0].is_file():
        raise HostToolMissingError(
            package, package, message=f"{package} is installed but its source tarball is missing",
            help=f"Reinstall it: apt-get install --reinstall {package}.",
        )
    return KernelSource(package=package, version=lines[0], tarball=tarballs[0])


def wanted_options(fragment: Path = FRAGMENT) -> dict[str, bool]:
    """Options the fragment sets: name -> True (must be ``=y``) / False (must be off)."""
    wanted: dict[str, bool] = {}
    for line in fragment.read_text().splitlines():
        if m := _OPTION_ON.match(line):
            wanted[m.group(1)] = True
        elif m := _OPTION_OFF.match(line):
            wanted[m.group(1)] = False
    return wanted


def config_mismatches(config: Path, wanted: dict[str, bool]) -> list[str]:
    """Options of ``wanted`` whose value in ``config`` differs ("CONFIG_X (want y, got m)")."""
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            have[name] = value
    problems = []
    for name, on in sorted(wanted.items()):
        got = have.get(name, "n")
        if (got == "y") != on:
            problems.append(f"{name} (want {'y' if on else 'n'}, got {got})")
    return problems


def verify_config(config: Path, fragment: Path = FRAGMENT, *, log: Path | None = None) -> None:
    """Raise ImageBuildError listing every fragment option the final config lost."""
    problems = config_mismatches(config, wanted_options(fragment))
    if problems:
        raise ImageBuildError(
            f"Kernel config is missing {len(problems)} required option(s): {', '.join(problems)}",
            details={"missing": problems, "config": str(config), "log": str(log or "")},
            help="Add the options' dependencies to smolbox/images/kernel/smolbox.config.",
        )


def kernel_inputs(source: KernelSource, fragment: Path = FRAGMENT) -> dict[str, str]:
    """What determines the kernel: source version, fragment text, recipe number."""
    return {
        "kind": "minimal",
        "source_package": f"{source.package}={source.version}",
        "fragment": fragment.read_text(),
        "recipe": str(RECIPE),
    }


def build_minimal_kernel(
    build_root: Path, progress: Progress | None = None, *, fragment: Path = FRAGMENT,
    source: KernelSource | None = None,
) -> BuiltKernel:
    """Return the cached minimal kernel, building it (~5 min on 2 cores) if needed."""
    progress = progress or NullProgress()
    source = source or find_source()
    inputs = kernel_inputs(source, fragment)
    key = sha256_inputs(inputs)
    log = log_path(build_root, "kernel", key)

    def produce(out: Path, work: Path) -> None:
        log.write_text("")
        jobs = str(os.cpu_count() or 1)
        progress.start("extract kernel source")
        run_step(["tar", "-xf", str(source.tarball), "-C", str(work)], log=log, step="extract")
        progress.finish("extract kernel source")
        trees = [p for p in work.iterdir() if (p / "Makefile").is_file()]
        if len(trees) != 1:
            raise ImageBuildError(f"Unexpected layout of {source.tarball}",
                                  details={"log": str(log)})
        src, obj = trees[0], work / "obj"
        make = ["make", "-C", str(src), f"O={obj}", "ARCH=x86_64"]
        run_step([*make, "tinyconfig"], log=log, step="tinyconfig")
        run_step([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
                  str(obj / ".config"), str(fragment)], log=log, step="merge fragment", cwd=src)
        run_step([*make, "olddefconfig"], log=log, step="olddefconfig")
        verify_config(obj / ".config", fragment, log=log)
        progress.start(STEP, EXPECTED_MAKE_LINES)
        run_step([*make, f"-j{jobs}", "vmlinux"], log=log, step=STEP,
                 on_line=lambda n, _line: progress.advance(STEP, min(n, EXPECTED_MAKE_LINES)))
        verify_config(obj / ".config", fragment, log=log)
        shutil.copy2(obj / "vmlinux", out / "vmlinux")
        shutil.copy2(obj / ".config", out / "config")
        progress.finish(STEP, f"vmlinux {(out / 'vmlinux').stat().st_size >> 20} MiB")

    entry = ensure_built(build_root, "kernel", key, produce)
    return BuiltKernel(vmlinux=entry / "vmlinux", config=entry / "config", key=key, inputs=inputs)

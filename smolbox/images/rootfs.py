"""Build the base guest userland: Debian bookworm minbase + Python, as a tarball.

Why a cached tarball: mmdebstrap takes ~30 s and needs the network, while the
guest files (init, agent) change often. The base is keyed by its inputs (suite,
mirrors, package list, recipe) in the build cache; the cheap final step
(:mod:`smolbox.images.assemble`) lays the guest files over it.

Docs, man pages, locales and apt lists are left out: the image is ~100 MiB
instead of ~250 MiB and every clone's page cache is smaller.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from smolbox.errors import HostToolMissingError, RootfsError
from smolbox.images.apt_sources import AptSource, sources_for
from smolbox.images.buildcache import ensure_built, log_path
from smolbox.images.hashing import sha256_inputs
from smolbox.images.progress import NullProgress, Progress
from smolbox.images.runner import run_step

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "bash", "coreutils", "procps", "iproute2", "ca-certificates")
RECIPE = 1  # bump when the mmdebstrap options below change
STEP = "debootstrap"
TARBALL = "rootfs.tar"
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]+(=[A-Za-z0-9.+~:-]+)?$")

# dpkg filters: never install docs, man pages, locales (copyright files stay).
_DPKG_OPTS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)


@dataclass(frozen=True)
class BaseRootfs:
    """A cached base userland tarball and the inputs that made it."""

    tarball: Path
    key: str
    inputs: dict[str, object]


def validate_packages(packages: tuple[str, ...]) -> tuple[str, ...]:
    """Reject anything that is not a plain Debian package name (it reaches a command line)."""
    for name in packages:
        if not _PACKAGE_NAME.match(name):
            raise RootfsError(
                f"Invalid Debian package name {name!r}",
                details={"package": name},
                help="Pass package names as apt knows them, e.g. --package git.",
            )
    return tuple(sorted(set(packages)))


def rootfs_inputs(packages: tuple[str, ...], mirrors: list[AptSource]) -> dict[str, object]:
    """What determines the base userland; hashed into its cache key."""
    return {
        "suite": SUITE,
        "packages": sorted(set(BASE_PACKAGES) | set(packages)),
        "mirrors": [m.line() for m in mirrors],
        "dpkg": list(_DPKG_OPTS),
        "recipe": RECIPE,
    }


def build_base_rootfs(
    build_root: Path, packages: tuple[str, ...] = (), progress: Progress | None = None,
    *, apt_dir: Path | None = None,
) -> BaseRootfs:
    """Return the cached base rootfs tarball, running mmdebstrap (~30 s) if needed."""
    progress = progress or NullProgress()
    extra = validate_packages(packages)
    mirrors = sources_for(SUITE, apt_dir) if apt_dir else sources_for(SUITE)
    inputs = rootfs_inputs(extra, mirrors)
    key = sha256_inputs(inputs)
    log = log_path(build_root, "rootfs", key)
    if shutil.which("mmdebstrap") is None:
        raise HostToolMissingError("mmdebstrap", "mmdebstrap")

    def produce(out: Path, work: Path) -> None:
        log.write_text("")
        include = ",".join(inputs["packages"])  # type: ignore[arg-type]
        argv = ["mmdebstrap", "--variant=minbase", "--mode=auto", "--format=tar",
                f"--include={include}", "--aptopt=Acquire::Languages \"none\""]
        argv += [f"--dpkgopt={opt}" for opt in _DPKG_OPTS]
        argv += [
            "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/* "
            "\"$1\"/var/log/*.log \"$1\"/var/cache/debconf/*-old",
            SUITE, str(out / TARBALL), *[m.line() for m in mirrors],
        ]
        progress.start(STEP)
        run_step(argv, log=log, step=STEP, cwd=work, error=RootfsError,
                 env={"TMPDIR": str(work)},
                 on_line=lambda n, _line: progress.advance(STEP, n))
        progress.finish(STEP, f"base rootfs {(out / TARBALL).stat().st_size >> 20} MiB")

    entry = ensure_built(build_root, "rootfs", key, produce)
    return BaseRootfs(tarball=entry / TARBALL, key=key, inputs=inputs)

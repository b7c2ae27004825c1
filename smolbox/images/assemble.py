"""The cheap last build step: lay the smolbox guest files over a userland tree and
turn it into the image's raw ext4 root filesystem.

Why separate from the base build: the guest init/agent changes far more often
than Debian does; this step takes about a second (tar extract + ``mkfs.ext4 -d``),
so a changed agent only costs this step and yields a new image version.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

from smolbox.errors import RootfsError
from smolbox.images.hashing import sha256_inputs
from smolbox.images.rootpath import resolve_in_root, write_file
from smolbox.images.runner import run_step
from smolbox.images.users import ensure_default_user

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
GUEST_PREFIX = "opt/smolbox/smolbox"
INIT_PATH = "sbin/smolbox-init"
HOSTNAME = "smolbox"
FREE_SPACE = 1 << 30  # sparse free space in every rootfs: machines need room to work
INIT_SCRIPT = b'''#!/usr/bin/python3 -I
"""smolbox guest init: run smolbox.guest.init from /opt/smolbox (see docs/ARCHITECTURE.md)."""
import sys

sys.path.insert(0, "/opt/smolbox")
from smolbox.guest.init import main  # noqa: E402

raise SystemExit(main())
'''


def guest_files(guest_dir: Path = GUEST_DIR) -> dict[str, bytes]:
    """Every file this step adds: rootfs-relative path -> content."""
    sources = sorted(guest_dir.glob("*.py"))
    if not (guest_dir / "init.py").is_file():
        raise RootfsError(
            f"The guest package at {guest_dir} has no init.py",
            details={"guest_dir": str(guest_dir)},
            help="The guest init/agent (smolbox/guest/) must be present to build an image.",
        )
    files = {f"{GUEST_PREFIX}/guest/{p.name}": p.read_bytes() for p in sources}
    files[f"{GUEST_PREFIX}/__init__.py"] = b""
    files[INIT_PATH] = INIT_SCRIPT
    files["etc/hostname"] = f"{HOSTNAME}\n".encode()
    files["etc/hosts"] = f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost\n".encode()
    files["etc/machine-id"] = b""
    return files


def guest_digest(guest_dir: Path = GUEST_DIR) -> str:
    """SHA-256 over the added files: part of the image version."""
    import hashlib

    return sha256_inputs({path: hashlib.sha256(data).hexdigest()
                          for path, data in guest_files(guest_dir).items()})


def require_python(tree: Path) -> None:
    """The agent is Python: a userland without python3 cannot become a smolbox image."""
    python = resolve_in_root(tree, "usr/bin/python3")
    if not python.is_file():
        raise RootfsError(
            "The root filesystem has no /usr/bin/python3; the smolbox guest agent needs it",
            details={"tree": str(tree)},
            help="Use a userland with Python 3 (e.g. a python:3-slim or debian image with "
                 "python3 installed).",
        )


def install_guest(tree: Path, guest_dir: Path = GUEST_DIR) -> None:
    """Write the guest files into ``tree`` (symlinks resolved inside it) and precompile."""
    require_python(tree)
    ensure_default_user(tree)
    for member, data in guest_files(guest_dir).items():
        write_file(tree, member, data, 0o755 if member == INIT_PATH else 0o644)
    # Byte-compile now: the guest would otherwise compile on every cold boot under TCG.
    # A guest Python with another magic number simply ignores these files.
    compileall.compile_dir(resolve_in_root(tree, f"{GUEST_PREFIX}"), quiet=2)


def tree_bytes(tree: Path) -> int:
    """Disk use of ``tree`` (allocated blocks, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def make_ext4(tree: Path, image: Path, *, log: Path, free_bytes: int = FREE_SPACE) -> None:
    """Create the sparse raw ext4 ``image`` from ``tree`` with ``free_bytes`` to spare."""
    used = tree_bytes(tree)
    size_mib = ((used * 11 // 10 + free_bytes) >> 20) + 16
    size_mib = (size_mib + 3) // 4 * 4
    run_step(["mkfs.ext4", "-F", "-q", "-L", "smolbox-root", "-m", "0",
              "-E", "root_owner=0:0", "-d", str(tree), str(image), f"{size_mib}M"],
             log=log, step="mkfs.ext4", error=RootfsError)


def extract_tarball(tarball: Path, tree: Path, *, log: Path) -> None:
    """Unpack a base rootfs tarball keeping owners, modes and device nodes."""
    tree.mkdir(parents=True, exist_ok=True)
    run_step(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(tree)],
             log=log, step="extract rootfs", error=RootfsError)

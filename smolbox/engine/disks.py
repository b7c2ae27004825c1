"""Thin copy-on-write disks: every machine writes to its own qcow2 over a read-only base.

Creating an overlay costs ~10 ms and no copy, which is what makes many short-lived
machines per image cheap; the base (an installed image's rootfs) is never written.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from smolbox import errors


def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        raise errors.HostToolMissingError("qemu-img", package="qemu-utils")
    return found


def create_overlay(base: Path, dest: Path, *, base_format: str,
                   size_mib: int | None = None) -> None:
    """``dest`` becomes a qcow2 whose reads fall through to ``base``."""
    argv = [qemu_img(), "create", "-q", "-f", "qcow2", "-b", str(base.resolve()),
            "-F", base_format, str(dest)]
    if size_mib is not None:
        argv.append(f"{size_mib}M")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        dest.unlink(missing_ok=True)
        raise errors.OverlayCreationError(f"qemu-img could not run: {err}") from None
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        raise errors.OverlayCreationError(
            f"Creating the disk overlay {dest.name} failed",
            details={"stderr": done.stderr.strip(), "base": str(base)},
        )

"""Resolve paths inside a guest root tree without ever leaving it.

Why: root trees come from container images, whose symlinks are often absolute
(``/sbin -> /usr/sbin``) or hostile (``etc -> ../../../etc``). Writing through
such a link with plain ``open()`` would follow it on the *host*. Here every
symlink met on the way is re-rooted at the tree, like ``chroot`` would, and
``..`` stops at the tree's top.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from smolbox.errors import RootfsError

MAX_LINKS = 40


def resolve_in_root(root: Path, member: str, *, follow_last: bool = True) -> Path:
    """Host path of ``member`` in ``root`` with every symlink resolved inside ``root``.

    With ``follow_last=False`` the final component is not followed (to create,
    replace or remove the entry itself).
    """
    pending = [p for p in PurePosixPath("/", member).parts[1:] if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        is_last = not pending
        if candidate.is_symlink() and (follow_last or not is_last):
            hops += 1
            if hops > MAX_LINKS:
                raise RootfsError(f"Too many symlinks resolving {member!r} in the root tree",
                                  details={"member": member})
            target = os.readlink(candidate)
            parts = [p for p in PurePosixPath(target).parts if p not in ("", ".")]
            if target.startswith("/"):
                resolved = []
                parts = parts[1:]
            pending = parts + pending
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def write_file(root: Path, member: str, data: bytes, mode: int = 0o644) -> Path:
    """Create or replace ``member`` (a regular file) with ``data``, parents as 0755 root dirs."""
    target = resolve_in_root(root, member, follow_last=False)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            raise RootfsError(f"{member} is a directory in the root tree",
                              details={"member": member})
        target.unlink()
    target.write_bytes(data)
    os.chmod(target, mode)
    return target

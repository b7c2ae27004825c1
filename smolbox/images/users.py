"""The guest's default unprivileged user: ``user`` (uid 1000) with ``/home/user``.

Why: code written for E2B sandboxes assumes commands run as ``user`` in
``/home/user`` unless ``root`` is asked; giving every image that user keeps such
code working unchanged. A userland that already has a ``user`` (or uid 1000) keeps
its own entry. Written at build time (not by the guest's init) so boots stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from smolbox.images.rootpath import resolve_in_root

NAME = "user"
UID = 1000
HOME = f"/home/{NAME}"
SHELLS = ("/bin/bash", "/bin/sh")


def _lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines() if path.is_file() else []


def _append(path: Path, line: str, mode: int) -> None:
    existing = path.read_text("utf-8") if path.is_file() else ""
    mode = path.stat().st_mode & 0o7777 if path.is_file() else mode
    if existing and not existing.endswith("\n"):
        existing += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(existing + line + "\n", "utf-8")
    os.chmod(path, mode)


def ensure_default_user(tree: Path) -> None:
    """Add ``user`` to passwd/group/shadow of ``tree`` and create its home (idempotent)."""
    passwd = resolve_in_root(tree, "etc/passwd")
    entries = [line.split(":") for line in _lines(passwd)]
    if any(e[0] == NAME or (len(e) > 2 and e[2] == str(UID)) for e in entries):
        return
    shell = next((s for s in SHELLS if resolve_in_root(tree, s.lstrip("/")).exists()),
                 "/bin/sh")
    _append(passwd, f"{NAME}:x:{UID}:{UID}::{HOME}:{shell}", 0o644)
    group = resolve_in_root(tree, "etc/group")
    if not any(line.split(":")[0] == NAME for line in _lines(group)):
        _append(group, f"{NAME}:x:{UID}:", 0o644)
    shadow = resolve_in_root(tree, "etc/shadow")
    if shadow.is_file() and not any(line.split(":")[0] == NAME for line in _lines(shadow)):
        _append(shadow, f"{NAME}:*:19000:0:99999:7:::", 0o640)
    home = resolve_in_root(tree, HOME.lstrip("/"), follow_last=False)
    home.mkdir(parents=True, exist_ok=True, mode=0o750)
    os.chown(home, UID, UID)

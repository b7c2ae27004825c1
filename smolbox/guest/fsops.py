"""Guest file operations beyond the basic set: rename and change owner.

Why separate from files.py: these serve front doors that act on behalf of a guest
user (the E2B envd API writes files as ``user``, moves entries); the agent only
registers them. Stdlib only: this file is copied into the guest rootfs.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Any

from smolbox.guest.session import OpError


def _path(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise OpError(f"{key} must be an absolute path", kind="request")
    return value


def op_move(req: dict[str, Any]) -> dict[str, Any]:
    """Rename ``source`` to ``destination`` (same filesystem; replaces a file)."""
    source, destination = _path(req, "source"), _path(req, "destination")
    try:
        os.rename(source, destination)
    except OSError as exc:
        raise OpError.from_os(exc, source if not os.path.lexists(source) else destination
                              ) from None
    return {}


def op_chown(req: dict[str, Any]) -> dict[str, Any]:
    """Give ``path`` (and, with ``parents_from``, every directory below that prefix on
    the way to it) to ``user`` and the user's primary group."""
    path = _path(req, "path")
    try:
        who = pwd.getpwnam(str(req.get("user")))
    except KeyError:
        raise OpError(f"no such user: {req.get('user')}", kind="user") from None
    targets = [path]
    prefix = req.get("parents_from")
    if isinstance(prefix, str) and path.startswith(prefix.rstrip("/") + "/"):
        parent = os.path.dirname(path)
        while parent.startswith(prefix.rstrip("/") + "/"):
            targets.append(parent)
            parent = os.path.dirname(parent)
    try:
        for target in targets:
            os.lchown(target, who.pw_uid, who.pw_gid)
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    return {}


FS_OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "move": op_move, "chown": op_chown,
}

"""Digests of what a VMFile declares, so ``up`` knows what changed since last time.

Why two kinds: a machine's *declaration* (image, size, network, env, cloud-init) can
only change by recreating it (``reload``), while provisioners can rerun in place. Step
digests are chained (each covers the steps before it), so changing step 2 reruns
steps 2, 3, …: later steps may build on what earlier ones left.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from smolbox.errors import VMFileValidationError
from smolbox.vmfile.model import MachineDecl, Provisioner


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_entries(root: Path) -> list[tuple[str, Path]]:
    """``(relative path, host path)`` of every regular file under ``root`` (sorted);
    a file ``root`` gives one entry with an empty relative path."""
    if root.is_file():
        return [("", root)]
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            host = Path(folder) / name
            if host.is_file() and not host.is_symlink():
                found.append((host.relative_to(root).as_posix(), host))
    return found


def _content(path: Path | None, where: str) -> str | None:
    if path is None:
        return None
    try:
        if path.is_dir():
            return hashlib.sha256(json.dumps(
                [(rel, _file_sha(host), host.stat().st_mode & 0o777)
                 for rel, host in tree_entries(path)]).encode()).hexdigest()
        return _file_sha(path)
    except OSError as err:
        raise VMFileValidationError(node=where, path=str(path),
                                    reason=f"cannot read {path}: {err.strerror}") from None


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def declaration_digest(decl: MachineDecl) -> str:
    """What cannot change without recreating the machine."""
    cloud = decl.cloud_init
    return _sha({
        # what was declared, not every default: a smolbox upgrade that adds a config
        # field must not make every machine look changed
        "config": decl.config.model_dump(mode="json", exclude_defaults=True),
        "image_url": decl.image_url, "image_sha256": decl.image_sha256,
        "cloud_init": None if cloud is None else {
            "hostname": cloud.hostname,
            "ssh_key": _content(cloud.ssh_key, f"vm[{decl.name}].cloud-init.ssh-key"),
            "user_data": _content(cloud.user_data, f"vm[{decl.name}].cloud-init.user-data"),
        },
        "ssh": None if decl.ssh is None else {"user": decl.ssh.user, "port": decl.ssh.port},
    })


def step_inputs(decl: MachineDecl, step: Provisioner) -> dict[str, Any]:
    where = f"vm[{decl.name}].provision[{step.index}]"
    return {"kind": step.kind, "destination": step.destination, "inline": step.inline,
            "source": _content(step.source, where + ".source"),
            "script": _content(step.script, where + ".script")}


def step_digests(decl: MachineDecl) -> tuple[str, ...]:
    """One chained digest per provisioner, in order."""
    chained: list[str] = []
    previous = ""
    for step in decl.provisioners:
        previous = _sha({"previous": previous, "step": step_inputs(decl, step)})
        chained.append(previous)
    return tuple(chained)


def pending_steps(done: tuple[str, ...], wanted: tuple[str, ...]) -> int:
    """Index (0-based) of the first step to run: the first whose digest differs."""
    for index, digest in enumerate(wanted):
        if index >= len(done) or done[index] != digest:
            return index
    return len(wanted)

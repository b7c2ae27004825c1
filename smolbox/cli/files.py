"""``smolbox cp``: copy a file into or out of a machine (``NAME:/path`` marks the guest side).

Why files only: a recursive copy needs a directory walk on both sides; for trees,
``tar`` through ``smolbox exec`` is the honest tool, and the error says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import typer

from smolbox import errors
from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.cli.client import sdk_backend
from smolbox.sdk.files import Files

_GUEST = re.compile(r"^(?P<vm>[a-z0-9][a-z0-9-]{0,62}):(?P<path>/.*)$")


@dataclass(frozen=True)
class Location:
    vm: str | None
    path: str


def parse_location(text: str) -> Location:
    """``NAME:/abs/path`` is in a machine; anything else is a host path."""
    match = _GUEST.match(text)
    if match:
        return Location(match["vm"], match["path"])
    return Location(None, text)


@app.command()
def cp(source: str = typer.Argument(..., help="NAME:/guest/path or a host path."),
       dest: str = typer.Argument(..., help="NAME:/guest/path or a host path.")) -> None:
    """Copy a file between the host and a machine (streamed, atomic on arrival).

    smolbox cp ./script.py box1:/root/script.py
    smolbox cp box1:/var/log/app.log ./
    """
    src, dst = parse_location(source), parse_location(dest)
    if (src.vm is None) == (dst.vm is None):
        raise errors.ValidationError(
            "Exactly one side of `cp` must be in a machine (NAME:/path)", field="source",
            value=f"{source} -> {dest}",
            help="Write the guest side as NAME:/absolute/path, e.g. box1:/root/file.txt.")
    with sdk_backend() as backend:
        if dst.vm is not None:
            local = Path(src.path)
            if local.is_dir():
                raise errors.ValidationError(
                    f"{local} is a directory; cp copies single files", field="source",
                    value=str(local),
                    help=f"Pack it: tar -C {local} -cf - . | smolbox exec NAME -i -- "
                         "tar -C /dest -xf - ; or copy files one by one.")
            files = Files(backend, dst.vm)
            target = dst.path
            if target.endswith("/") or _is_guest_dir(files, target):
                target = target.rstrip("/") + "/" + local.name
            files.upload(local, target)
            size, shown = os.path.getsize(local), f"{dst.vm}:{target}"
        else:
            assert src.vm is not None
            written = Files(backend, src.vm).download(src.path, Path(dst.path))
            size, shown = written.stat().st_size, str(written)
    if OPTIONS.json:
        render.print_json({"source": source, "dest": shown, "bytes": size})
    else:
        print(f"{source} -> {shown} ({size} bytes)")


def _is_guest_dir(files: Files, path: str) -> bool:
    try:
        return files.stat(path).is_dir
    except errors.GuestFileNotFoundError:
        return False

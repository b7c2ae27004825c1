"""``pause`` and ``resume``: freeze a machine's vCPUs and continue them."""

from __future__ import annotations

import typer

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.cli.client import sdk_backend


def _done(name: str, state: str) -> None:
    if OPTIONS.json:
        render.print_json({"name": name, "state": state})
    else:
        print(f"{name} {state}")


@app.command()
def pause(name: str = typer.Argument(..., help="Machine to pause.")) -> None:
    """Freeze a running machine (memory and processes stay; exec is refused)."""
    with sdk_backend() as backend:
        info = backend.pause(name)
    _done(info.name, info.state)


@app.command()
def resume(name: str = typer.Argument(..., help="Machine to resume.")) -> None:
    """Continue a paused machine (its clock is set from the host)."""
    with sdk_backend() as backend:
        info = backend.resume(name)
    _done(info.name, info.state)

"""Snapshot commands: ``snapshot create|list|rm`` and ``fork``.

Thin: parse, call the SDK backend, render (table, or JSON with ``--json``).
"""

from __future__ import annotations

from typing import Any

import typer

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.cli.client import sdk_backend
from smolbox.sdk.models import MachineInfo, SnapshotInfo

snapshot_app = typer.Typer(help="Snapshots: RAM + devices + disk, forkable into new machines.",
                           no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


def _snapshot_row(snap: SnapshotInfo) -> dict[str, Any]:
    return snap.model_dump(mode="json")


def _machine_row(info: MachineInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "state": info.state,
            "source_snapshot": info.source_snapshot}


@snapshot_app.command("create")
def create(machine: str = typer.Argument(..., help="Machine to snapshot (keeps running)."),
           name: str = typer.Argument(..., help="Snapshot name.")) -> None:
    """Snapshot a running or paused machine."""
    with sdk_backend() as backend:
        snap = backend.snapshot(machine, name)
    if OPTIONS.json:
        render.print_json(_snapshot_row(snap))
    else:
        print(snap.name)


@snapshot_app.command("list")
def list_snapshots(machine: str | None = typer.Option(None, "--machine", "-m",
                                                       help="Only this machine's.")) -> None:
    """List snapshots."""
    with sdk_backend() as backend:
        rows = [_snapshot_row(s) for s in backend.list_snapshots(machine)]
    if OPTIONS.json:
        render.print_json(rows)
        return
    render.print_table(None, ["name", "id", "machine", "size", "image", "template"],
                       ([r["name"], r["id"], r["vm_id"], r["size"], r["image"], r["template"]]
                        for r in rows))


@snapshot_app.command("rm")
def remove(names: list[str] = typer.Argument(..., help="Snapshots to delete.")) -> None:
    """Delete snapshots (machines forked from them keep running)."""
    with sdk_backend() as backend:
        for name in names:
            backend.delete_snapshot(name)
            if not OPTIONS.json:
                print(f"{name} deleted")
    if OPTIONS.json:
        render.print_json({"deleted": names})


@app.command()
def fork(snapshot: str = typer.Argument(..., help="Snapshot to fork from."),
         count: int = typer.Option(1, "--count", "-n", help="How many machines (1-64)."),
         names: list[str] = typer.Option([], "--name", help="Names, one per machine."),
         env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE added to env.")
         ) -> None:
    """New machines from a snapshot, each a copy-on-write clone (all or nothing)."""
    from smolbox.cli.machines import _parse_env

    with sdk_backend() as backend:
        made = backend.fork(snapshot, count, names=names or None, env=_parse_env(env) or None)
    if OPTIONS.json:
        render.print_json([_machine_row(m) for m in made])
    else:
        for machine in made:
            print(machine.name)

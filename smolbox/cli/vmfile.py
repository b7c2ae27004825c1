"""``smolbox up / down / reload / provision / status``: machines from a ``VMFile.kdl``.

Thin by design: the work is in :mod:`smolbox.vmfile`. Provisioner output streams
live, each line prefixed with the machine and the step (``web | provision 2 (shell) |``);
with ``--json`` the output goes to stderr and stdout gets one JSON document.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.vmfile import load
from smolbox.vmfile.apply import Outcome

FILE_OPTION = typer.Option(None, "--file", "-f",
                           help="The VMFile (default: ./VMFile.kdl; a folder works too).")
NAMES = typer.Argument(None, help="Declared machines to act on (default: all).")


class LinePrinter:
    """Prefixes every output line with ``machine | step |``; keeps partial lines."""

    def __init__(self) -> None:
        self.partial: dict[tuple[str, str, str], str] = {}
        self.sink = sys.stderr if OPTIONS.json else sys.stdout

    def __call__(self, machine: str, label: str, stream: str, text: str) -> None:
        if stream == "step":
            self.sink.write(f"==> {machine}: {text}")
            self.sink.flush()
            return
        key = (machine, label, stream)
        lines = (self.partial.pop(key, "") + text).split("\n")
        self.partial[key] = lines.pop()
        for line in lines:
            self.sink.write(f"{machine} | {label} | {line}\n")
        self.sink.flush()

    def flush(self) -> None:
        for (machine, label, _stream), rest in self.partial.items():
            if rest:
                self.sink.write(f"{machine} | {label} | {rest}\n")
        self.partial.clear()


def _outcomes(done: list[Outcome]) -> None:
    if OPTIONS.json:
        render.print_json([o.to_dict() for o in done])
        return
    render.print_table(None, ["machine", "action", "id", "steps run", "note"],
                       ([o.name, o.action, o.vm_id, ",".join(map(str, o.steps_run)), o.note]
                        for o in done))


def _run(verb: str, file: Path | None, names: list[str] | None) -> None:
    printer = LinePrinter()
    with load(file, output=printer) as session:
        try:
            done: list[Any] = getattr(session, verb)(*(names or ()))
        finally:
            printer.flush()
    _outcomes(done)


@app.command("up")
def up(names: list[str] | None = NAMES, file: Path | None = FILE_OPTION) -> None:
    """Create the declared machines that are missing and run changed provisioners."""
    _run("up", file, names)


@app.command("down")
def down(names: list[str] | None = NAMES, file: Path | None = FILE_OPTION) -> None:
    """Delete the declared machines."""
    _run("down", file, names)


@app.command("reload")
def reload(names: list[str] | None = NAMES, file: Path | None = FILE_OPTION) -> None:
    """Recreate the machines whose declaration changed."""
    _run("reload", file, names)


@app.command("provision")
def provision(names: list[str] | None = NAMES, file: Path | None = FILE_OPTION) -> None:
    """Rerun every provisioner of the declared machines."""
    _run("provision", file, names)


@app.command("status")
def status(names: list[str] | None = NAMES, file: Path | None = FILE_OPTION) -> None:
    """Declared machines vs what exists."""
    with load(file) as session:
        shown = session.status(*(names or ()))
    if OPTIONS.json:
        render.print_json([s.to_dict() for s in shown])
        return
    render.print_table(None, ["machine", "declared", "id", "state", "in sync", "provisioned"],
                       ([s.name, "yes" if s.declared else "no (not in the file)", s.vm_id,
                         s.state, "yes" if s.in_sync else "no", f"{s.provisioned}/"
                         f"{s.provisioners}"] for s in shown))


@app.command("ssh", context_settings={"allow_interspersed_args": False})
def ssh(
    name: str = typer.Argument(..., help="A machine declared in the VMFile."),
    command: list[str] | None = typer.Argument(None, help="Command to run (after --); "
                                                         "none: an interactive shell."),
    file: Path | None = FILE_OPTION,
) -> None:
    """Run a command, or an interactive shell, over SSH in a declared machine (images
    without the agent); the host key is the pinned one, the exit code passes through."""
    from smolbox.ssh import SSHClient
    from smolbox.vmfile.foreign import ssh_target

    if command and command[0] == "--":  # click keeps it when options stop at NAME
        command = command[1:]
    with load(file) as session:
        decl = session.vmfile.select([name])[0]
        record = session.engine.get(name)
        target = ssh_target(session.engine, str(session.vmfile.path), decl, record)
    if not command:
        with SSHClient(target) as client:
            raise typer.Exit(client.interactive())
    code = 0
    with SSHClient(target) as client:
        for event in client.exec_stream(command):
            if event.kind == "exit":
                code = event.exit_code if event.exit_code is not None else 128 + (
                    event.signal or 0)
            else:
                sink = sys.stdout if event.kind == "stdout" else sys.stderr
                sink.buffer.write(event.data)
                sink.flush()
    raise typer.Exit(code)

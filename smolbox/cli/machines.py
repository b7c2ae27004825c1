"""Machine commands: create, list, info, exec, run, start, stop, restart, rm, logs.

Thin by design: parse arguments, call the SDK backend (the local engine, or the
server in ``SMOLBOX_URL``), render. ``exec`` and ``run`` stream the guest's output
as it arrives and exit with the guest command's own exit code (128+N when a signal
N killed it), like ``docker exec`` and ``ssh``. ``reconcile`` is host maintenance
and always runs on this host's engine.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.cli.client import sdk_backend
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.sdk.backend import Backend
from smolbox.sdk.models import MachineInfo


@contextmanager
def engine(*, reconcile: bool = True) -> Iterator[Engine]:
    with Engine.open(reconcile=reconcile) as eng:
        yield eng


def _row(info: MachineInfo) -> dict[str, Any]:
    return {
        "id": info.id, "name": info.name, "state": info.state,
        "image": f"{info.image}:{info.image_version}", "pid": info.pid,
        "ip": info.ip, "error": info.error_reason,
    }


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _config(name: str | None, image: str, memory: int, vcpus: int, env: list[str],
            boot_timeout: float) -> MachineConfig:
    return MachineConfig(name=name, image=image, memory_mib=memory, vcpus=vcpus,
                         env=_parse_env(env), timeouts={"boot": boot_timeout})


NAME_OPT = typer.Option(None, "--name", help="Machine name (default: generated id).")
IMAGE_OPT = typer.Option("default", "--image", help="Image NAME or NAME:VERSION.")
MEMORY_OPT = typer.Option(256, "--memory", help="Guest memory in MiB (128-65536).")
VCPUS_OPT = typer.Option(1, "--vcpus", help="Virtual CPUs (1-32).")
ENV_OPT = typer.Option([], "--env", "-e", help="KEY=VALUE for every command (repeatable).")
BOOT_OPT = typer.Option(60.0, "--boot-timeout", help="Seconds allowed for boot.")


@app.command()
def create(name: str | None = NAME_OPT, image: str = IMAGE_OPT, memory: int = MEMORY_OPT,
           vcpus: int = VCPUS_OPT, env: list[str] = ENV_OPT,
           boot_timeout: float = BOOT_OPT) -> None:
    """Create and boot a machine; prints its id."""
    with sdk_backend() as backend:
        record = backend.create(_config(name, image, memory, vcpus, env, boot_timeout))
    if OPTIONS.json:
        render.print_json(_row(record))
    else:
        print(record.name)


@app.command("list")
def list_machines() -> None:
    """List machines."""
    with sdk_backend() as backend:
        rows = [_row(record) for record in backend.list()]
    if OPTIONS.json:
        render.print_json(rows)
        return
    render.print_table(None, ["name", "id", "state", "image", "pid", "error"],
                       ([r["name"], r["id"], r["state"], r["image"], r["pid"], r["error"]]
                        for r in rows))


@app.command()
def info(name: str) -> None:
    """Show one machine in detail."""
    with sdk_backend() as backend:
        data = backend.info(name).model_dump(mode="json")
    if OPTIONS.json:
        render.print_json(data)
    else:
        render.print_mapping({k: v for k, v in data.items() if k != "config"}, title=name)


def _stream(backend: Backend, name: str, command: list[str], env: dict[str, str],
            cwd: str | None, user: str | None, timeout: float | None) -> int:
    """Copy the command's output to ours as it arrives; return a shell-style exit code."""
    out, err = sys.stdout.buffer, sys.stderr.buffer
    code = 1
    for event in backend.exec_stream(name, command, env=env or None, cwd=cwd, user=user,
                                     timeout=timeout):
        if event.kind == "stdout":
            out.write(event.data)
            out.flush()
        elif event.kind == "stderr":
            err.write(event.data)
            err.flush()
        elif event.kind == "exit":
            code = event.exit_code if event.exit_code is not None else 128 + (event.signal or 0)
    return code


CMD_ARG = typer.Argument(..., help="The command and its arguments (after --).")
CWD_OPT = typer.Option(None, "--cwd", help="Working directory in the guest.")
USER_OPT = typer.Option(None, "--user", "-u", help="Guest user name or uid.")
TIMEOUT_OPT = typer.Option(None, "--timeout", help="Kill the command after this many seconds.")


@app.command("exec")
def exec_command(name: str, command: list[str] = CMD_ARG, env: list[str] = ENV_OPT,
                 cwd: str | None = CWD_OPT, user: str | None = USER_OPT,
                 timeout: float | None = TIMEOUT_OPT) -> None:
    """Run a command in a machine; output streams, the exit code passes through."""
    with sdk_backend() as backend:
        code = _stream(backend, name, command, _parse_env(env), cwd, user, timeout)
    raise typer.Exit(code)


@app.command()
def run(command: list[str] = CMD_ARG, name: str | None = NAME_OPT, image: str = IMAGE_OPT,
        memory: int = MEMORY_OPT, vcpus: int = VCPUS_OPT, env: list[str] = ENV_OPT,
        cwd: str | None = CWD_OPT, timeout: float | None = TIMEOUT_OPT,
        keep: bool = typer.Option(False, "--keep", help="Keep the machine afterwards."),
        boot_timeout: float = BOOT_OPT) -> None:
    """Create a machine, run one command in it, delete it (unless --keep)."""
    with sdk_backend() as backend:
        record = backend.create(_config(name, image, memory, vcpus, [], boot_timeout))
        try:
            code = _stream(backend, record.id, command, _parse_env(env), cwd, None, timeout)
        finally:
            if not keep:
                backend.delete(record.id, force=True)
    raise typer.Exit(code)


@app.command()
def start(name: str) -> None:
    """Boot a stopped machine again (its disk is kept)."""
    with sdk_backend() as backend:
        record = backend.start(name)
    print(record.name)


@app.command()
def stop(name: str, force: bool = typer.Option(False, "--force", help="Skip the graceful steps.")
         ) -> None:
    """Stop a machine (graceful shutdown ladder); prints the step that stopped it."""
    with sdk_backend() as backend:
        step = backend.stop(name, graceful=not force)
    if OPTIONS.json:
        render.print_json({"name": name, "stopped_by": step})
    else:
        print(f"{name} stopped ({step})")


@app.command()
def restart(name: str) -> None:
    """Stop then start a machine."""
    with sdk_backend() as backend:
        backend.restart(name)
    print(name)


@app.command("rm")
def remove(names: list[str] = typer.Argument(..., help="Machines to delete."),
           force: bool = typer.Option(False, "--force", "-f", help="Kill instead of shutdown.")
           ) -> None:
    """Delete machines and everything they own on the host."""
    with sdk_backend() as backend:
        for name in names:
            backend.delete(name, force=force)
            if not OPTIONS.json:
                print(f"{name} deleted")
    if OPTIONS.json:
        render.print_json({"deleted": names})


@app.command()
def logs(name: str, follow: bool = typer.Option(False, "--follow", "-f")) -> None:
    """Print the machine's console log (bounded); --follow keeps printing."""
    with sdk_backend() as backend:
        for chunk in backend.logs(name, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()


@app.command()
def reconcile() -> None:
    """Repair drift after crashes: dead machines -> error, orphans removed.

    Prints the report of this one pass (the engine is opened without its own
    start-up reconcile, so the pass that does the work is the one shown)."""
    with engine(reconcile=False) as eng:
        report = eng.reconcile()
    data = dataclasses.asdict(report)
    if OPTIONS.json:
        render.print_json(data)
    else:
        render.print_mapping(data, title="reconcile")

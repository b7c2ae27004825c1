"""An isolated smolbox home for one bench run, and the guarantee that it is cleaned up.

Why: a bench must never see or touch the user's machines, and must leave nothing
behind — not on failure, not on Ctrl-C or SIGTERM. Like tests/conftest.py it uses
its own SMOLBOX_HOME/SMOLBOX_IMAGES, a short SMOLBOX_RUN under /tmp (unix socket
paths are limited to 107 bytes) and shares only the heavy build cache. On exit
every machine and snapshot is deleted through the engine, then any QEMU process
still running under the home or run root is killed and reported as a leak.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from smolbox.engine.engine import Engine
from smolbox.engine.reconcile import qemu_processes_under

log = logging.getLogger("bench")
_ENV_KEYS = ("SMOLBOX_HOME", "SMOLBOX_RUN", "SMOLBOX_IMAGES")


@dataclass
class Sandbox:
    """Where this run keeps its state; ``leaked`` is filled in at the end."""

    home: Path
    run: Path
    scratch: Path
    leaked: list[int] = field(default_factory=list)
    cleanup_problems: list[str] = field(default_factory=list)
    engine: Engine | None = None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def delete_everything(engine: Engine) -> list[str]:
    """Delete all machines and snapshots of this home; return what failed (never raises)."""
    problems: list[str] = []
    try:
        machines = engine.list_machines()
    except Exception as err:
        return [f"listing machines: {err}"]
    for record in machines:
        try:
            engine.delete(record.id, force=True)
        except Exception as err:
            problems.append(f"machine {record.id}: {err}")
    with suppress(Exception):
        for snap in reversed(engine.list_snapshots()):  # children before parents
            try:
                engine.delete_snapshot(snap.name)
            except Exception as err:
                problems.append(f"snapshot {snap.name}: {err}")
    return problems


def kill_leftovers(*roots: Path) -> list[int]:
    """Kill every QEMU whose pidfile lives under ``roots``; return their pids."""
    leaked: list[int] = []
    for root in roots:
        if not root.exists():
            continue
        for pid in qemu_processes_under(root):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            leaked.append(pid)
    return leaked


@contextmanager
def isolated_home() -> Iterator[Sandbox]:
    """Point SMOLBOX_* at fresh temp dirs; on exit clean up and remove them.

    Set ``box.engine`` once made: its machines and snapshots are deleted first,
    then QEMU processes still under the home or run root are killed (a leak).

    SIGTERM is turned into KeyboardInterrupt so both end up in the same cleanup,
    and both signals are ignored while cleaning up so a second Ctrl-C cannot cut
    the cleanup short.
    """
    saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
    saved_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    home = Path(tempfile.mkdtemp(prefix="smolbox-bench-home-"))
    run = Path(tempfile.mkdtemp(prefix="sbxb-", dir="/tmp"))
    scratch = home / "scratch"
    scratch.mkdir()
    os.environ["SMOLBOX_HOME"] = str(home)
    os.environ["SMOLBOX_RUN"] = str(run)
    os.environ["SMOLBOX_IMAGES"] = str(home / "images")
    box = Sandbox(home=home, run=run, scratch=scratch)
    try:
        yield box
    finally:
        saved_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if box.engine is not None:
                box.cleanup_problems = delete_everything(box.engine)
                with suppress(Exception):
                    box.engine.close()
            box.leaked = kill_leftovers(run, home)
            if box.leaked:
                log.error("killed leaked QEMU processes: %s", box.leaked)
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        finally:
            signal.signal(signal.SIGINT, saved_int)
            signal.signal(signal.SIGTERM, saved_term)

"""The session leak guard: whatever a test session leaves behind fails the session.

Why a module of its own: ``tests/conftest.py`` uses it for the real suite and
``tests/foundation/test_leakguard.py`` runs a tiny pytest session on top of it that
forgets a machine on purpose, to show the guard fails it.

What one session owns, and so what the guard may blame on it (other sessions, the
developer's CLI and other test runs share this host, so "any QEMU" would be wrong):

- processes whose environment carries ``SMOLBOX_TEST_SESSION=<tag>`` (every child of
  the session inherits it: QEMU, agents, servers, tmux servers, virtiofsd) or whose
  argv names the session's home, run or temp directory (the engine's QEMU, the
  snapshot step's QEMU, bootcheck QEMUs, the guest agent test's VM);
- the session's temp directory (``tempfile`` and ``TMPDIR`` point there, tmux sockets
  too): anything left in it is a leaked temp dir, file or socket;
- the store of its ``SMOLBOX_HOME``: machine rows, network leases and snapshots other
  than the shared templates; machine and run directories;
- network objects named after the session: the bridge ``SMOLBOX_NET_BRIDGE`` (TAPs
  whose alias names it, nft tables ``smolbox_<bridge>*``) and network namespaces
  whose name holds the tag (``tests/network`` names its namespaces with it);
- listening sockets held by the pytest process itself (a server left running).

Leaks are reported first and cleaned up after, so the evidence is in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SESSION_VAR = "SMOLBOX_TEST_SESSION"
_ENV_KEYS = ("SMOLBOX_HOME", "SMOLBOX_RUN", "SMOLBOX_IMAGES", "SMOLBOX_NET_BRIDGE",
             SESSION_VAR, "TMPDIR", "TMUX_TMPDIR", "SMOLBOX_RAM_KEEPER_IDLE")


@dataclass(frozen=True)
class Session:
    """The names and directories one test session owns."""

    tag: str
    home: Path
    run: Path
    tmp: Path

    @property
    def bridge(self) -> str:
        return f"sbt{self.tag}"

    @property
    def dirs(self) -> tuple[Path, ...]:
        return (self.home, self.run, self.tmp)


def session_tag() -> str:
    """The running session's tag (tests that name host objects put it in the name)."""
    return os.environ.get(SESSION_VAR, "")


# --------------------------------------------------------------------------- processes


def _ancestors() -> set[int]:
    """This process and its parents: they carry the tag too and are not leaks."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def session_processes(session: Session) -> dict[int, str]:
    """pid -> command line of every live process the session owns (zombies excluded)."""
    mine = _ancestors()
    tag = f"{SESSION_VAR}={session.tag}".encode()
    names = [str(d).encode() for d in session.dirs]
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        if tag in environ or any(name in cmdline for name in names):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- store + files


def store_leaks(home: Path) -> list[str]:
    """Rows a finished session must not hold: machines, leases, non-template snapshots."""
    database = home / "smolbox.db"
    if not database.exists():
        return []
    leaks = []
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}
        if "machines" in tables:
            leaks += [f"store row: machine {vm_id} ({state})"
                      for vm_id, state in db.execute("SELECT id, state FROM machines")]
        if "network_leases" in tables:
            leaks += [f"store row: network lease {row}"
                      for row in db.execute("SELECT * FROM network_leases")]
        if "snapshots" in tables:
            for name, manifest in db.execute("SELECT name, manifest FROM snapshots"):
                if not json.loads(manifest or "{}").get("template"):
                    leaks.append(f"store row: snapshot {name}")
    finally:
        db.close()
    return leaks


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _empty_tmux_dir(path: Path) -> bool:
    """tmux leaves its ``tmux-UID`` socket dir behind once its servers exit, sometimes
    with a socket nobody listens on any more; only a live server is a leak (and it is
    also found as a process with the session tag)."""
    if not (path.name.startswith("tmux-") and path.is_dir()):
        return False
    for entry in path.iterdir():
        if not entry.is_socket():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(entry))
                return False  # a server still answers
            except OSError:
                continue
    return True


def file_leaks(session: Session) -> list[str]:
    """Machine dirs, run dirs and anything left in the session's temp directory."""
    leaks = [f"machine dir {p}" for p in _entries(session.home / "machines")]
    leaks += [f"run dir entry {p}" for p in _entries(session.run)]
    leaks += [f"temp {'socket' if p.is_socket() else 'dir' if p.is_dir() else 'file'} {p}"
              for p in _entries(session.tmp) if not _empty_tmux_dir(p)]
    return leaks


# --------------------------------------------------------------------------- network


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    return done.stdout if done.returncode == 0 else ""


def network_leaks(session: Session) -> list[str]:
    """TAPs and bridge of the session's bridge, its nft tables, namespaces with its tag."""
    leaks = []
    for link in json.loads(_run("ip", "-j", "-d", "link", "show") or "[]"):
        name, alias = link.get("ifname", ""), link.get("ifalias", "") or ""
        if name == session.bridge or f"bridge={session.bridge} " in alias:
            leaks.append(f"link {name} ({alias or 'bridge'})")
    for line in _run("nft", "list", "tables").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith(f"smolbox_{session.bridge}"):
            leaks.append(f"nft table {parts[1]} {parts[2]}")
    netns = Path("/run/netns")
    leaks += [f"netns {p.name}" for p in _entries(netns) if session.tag in p.name]
    return leaks


def _clean_network(leaks: list[str]) -> None:
    for leak in leaks:
        kind, _, rest = leak.partition(" ")
        if kind == "link":
            _run("ip", "link", "del", rest.split()[0])
        elif kind == "nft":
            family, name = rest.split()[1:3]
            _run("nft", "delete", "table", family, name)
        elif kind == "netns":
            _run("ip", "netns", "del", rest)


# --------------------------------------------------------------------------- sockets


def _socket_inodes(pid: int | str = "self") -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in _entries(fd_dir):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_sockets() -> list[str]:
    """Listening TCP/unix sockets this very process holds (servers left running)."""
    mine = _socket_inodes()
    found = []
    for table in ("tcp", "tcp6"):
        for line in _entries_lines(Path(f"/proc/net/{table}"))[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in mine:
                found.append(f"listening {table} socket {fields[1]}")
    for line in _entries_lines(Path("/proc/net/unix"))[1:]:
        fields = line.split()
        if len(fields) > 6 and int(fields[3], 16) & 0x10000 and fields[6] in mine:
            found.append(f"listening unix socket {fields[7] if len(fields) > 7 else '@'}")
    return found


def _entries_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


# --------------------------------------------------------------------------- the guard


def find_leaks(session: Session) -> tuple[list[str], dict[int, str]]:
    """Everything the session still holds, and the processes among it."""
    procs = session_processes(session)
    leaks = [f"process {pid}: {cmd[:300]}" for pid, cmd in sorted(procs.items())]
    leaks += store_leaks(session.home)
    leaks += file_leaks(session)
    leaks += network_leaks(session)
    leaks += listening_sockets()
    return leaks, procs


def settle(session: Session, seconds: float = 10.0) -> tuple[list[str], dict[int, str]]:
    """Leaks that are still there after a grace period (SIGKILL and reaping are
    asynchronous; a daemonised process can outlive its killer by a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        leaks, procs = find_leaks(session)
        if not leaks or time.monotonic() > deadline:
            return leaks, procs
        time.sleep(0.2)


def open_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, dict[str, str | None]]:
    """Point every smolbox directory, the temp dir and the bridge at this session."""
    tag = secrets.token_hex(3)
    home = tmp_path_factory.mktemp("smolbox-home")  # fixes pytest's basetemp first
    run_root = Path(tempfile.mkdtemp(prefix=f"sbx-{tag}-"))  # short: unix socket paths
    tmp = Path(tempfile.mkdtemp(prefix=f"sbt-{tag}-"))
    session = Session(tag=tag, home=home, run=run_root, tmp=tmp)
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update({"SMOLBOX_HOME": str(home), "SMOLBOX_RUN": str(run_root),
                       "SMOLBOX_IMAGES": str(home / "images"),
                       "SMOLBOX_NET_BRIDGE": session.bridge, SESSION_VAR: tag,
                       "TMPDIR": str(tmp), "TMUX_TMPDIR": str(tmp),
                       # RAM keepers (smolbox.vmm.ramshare) leave within the grace
                       "SMOLBOX_RAM_KEEPER_IDLE": "2"})
    tempfile.tempdir = str(tmp)
    return session, saved


def close_session(session: Session, saved: dict[str, str | None]) -> list[str]:
    """Report, then remove, what the session left; restore the environment."""
    leaks, procs = settle(session)
    _kill(procs)
    _clean_network([leak for leak in leaks if leak.split(" ", 1)[0] in ("link", "nft", "netns")])
    tempfile.tempdir = None
    for directory in (session.run, session.tmp):
        shutil.rmtree(directory, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return leaks


def leaked_machines(engine: object) -> list[str]:
    """Machines still in the store when the engine fixture ends: a test forgot them.

    Checked before the fixture force-deletes them, so the forgetting test is named
    by its machine (its name is in the message) instead of being silently cleaned.
    """
    from smolbox.engine.engine import Engine

    assert isinstance(engine, Engine)
    return [f"machine {r.id} (name={r.name}, state={r.state.value})"
            for r in engine.list_machines()]


@pytest.fixture(scope="session", autouse=True)
def smolbox_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    session, saved = open_session(tmp_path_factory)
    yield session.home
    leaks = close_session(session, saved)
    assert not leaks, "the test session leaked:\n  " + "\n  ".join(leaks)


@pytest.fixture(scope="session")
def default_image(smolbox_env: Path):  # type: ignore[no-untyped-def]
    """The default guest image, built once per machine (cached) and installed here."""
    from smolbox.images.testing import ensure_default_image
    from smolbox.paths import Paths

    return ensure_default_image(Paths.from_env())


@pytest.fixture(scope="session")
def engine(default_image: object) -> Iterator[object]:
    """One embedded engine for the whole session (machines are shared via fixtures)."""
    from smolbox.engine.engine import Engine

    eng = Engine()
    yield eng
    forgotten = leaked_machines(eng)
    for record in eng.list_machines():
        eng.delete(record.id, force=True)
    eng.close()
    assert not forgotten, "tests forgot machines:\n  " + "\n  ".join(forgotten)

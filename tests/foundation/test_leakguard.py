"""The leak guard fails a session that leaves something behind (tests/leakguard.py).

Each case runs a tiny pytest session in a subprocess on top of the real guard, with
one test that forgets one kind of resource on purpose, and checks that the session
fails naming it, and that the guard removed it afterwards. A clean session passes,
so the guard is not simply always failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_CONFTEST = """
from tests.leakguard import default_image, engine, smolbox_env
__all__ = ["default_image", "engine", "smolbox_env"]
"""


def run_session(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run one test file (``body``) as its own pytest session on the guard."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(_CONFTEST)
    (suite / "test_leaky.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--basetemp", str(tmp_path / "base"), "--rootdir", str(suite), str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=900, check=False)


def assert_leak_reported(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "leaked" in output or "forgot" in output, output
    for needle in needles:
        assert needle in output, output


def test_a_clean_session_passes(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        import tempfile, shutil, subprocess
        def test_tidy():
            path = tempfile.mkdtemp()
            shutil.rmtree(path)
            subprocess.run(["true"], check=True)
    """)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_forgotten_machine_fails_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        from smolbox.config import MachineConfig
        def test_forgets(engine):
            engine.create(MachineConfig(name="forgotten-box"), start=False)
    """)
    assert_leak_reported(done, "tests forgot machines", "name=forgotten-box")


def test_a_forgotten_process_is_reported_and_killed(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    done = run_session(tmp_path, f"""
        import subprocess
        def test_forgets():
            proc = subprocess.Popen(["sleep", "1000"])
            open({str(marker)!r}, "w").write(str(proc.pid))
    """)
    assert_leak_reported(done, "sleep 1000")
    pid = int(marker.read_text())
    assert _dead(pid), "the guard did not kill the leaked process"


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_a_qemu_naming_the_run_dir_is_caught_without_the_session_environment(
        tmp_path: Path) -> None:
    """A QEMU started with a scrubbed environment (as a daemonised helper could be) is
    still the session's when its argv names the session's run directory."""
    marker = tmp_path / "pid"
    done = run_session(tmp_path, f"""
        import os, subprocess, time
        from pathlib import Path
        def test_forgets():
            run = Path(os.environ["SMOLBOX_RUN"]) / "helper"
            run.mkdir()
            proc = subprocess.Popen(
                ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
                 "-S", "-pidfile", str(run / "qemu.pid")], env={{"PATH": os.environ["PATH"]}},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            open({str(marker)!r}, "w").write(str(proc.pid))
            time.sleep(0.5)
    """)
    assert_leak_reported(done, "qemu-system-x86_64 -M none", "run dir entry")
    assert _dead(int(marker.read_text()))


def test_a_forgotten_temp_dir_and_socket_fail_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        import socket, tempfile, os
        KEEP = []
        def test_forgets():
            path = tempfile.mkdtemp(prefix="left-")
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.path.join(tempfile.gettempdir(), "left.sock"))
            s.listen(1)
            KEEP.append(s)
    """)
    assert_leak_reported(done, "temp dir", "left-", "temp socket", "left.sock",
                         "listening unix socket")


def test_a_listening_tcp_server_left_in_process_fails_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        import socket
        KEEP = []
        def test_forgets():
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            KEEP.append(s)
    """)
    assert_leak_reported(done, "listening tcp socket 0100007F:")


def test_leftover_store_rows_fail_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        from smolbox.paths import Paths
        from smolbox.store import MachineRecord, Store
        def test_forgets():
            paths = Paths.from_env()
            paths.ensure()
            with Store.open(paths.database) as store:
                store.insert_machine(MachineRecord(id="row-only", name="row-only",
                                                   config={}, image_ref="default"))
    """)
    assert_leak_reported(done, "store row: machine row-only")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                    reason="needs root for namespaces, links and nft")
def test_leftover_netns_tap_and_nft_table_fail_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        import subprocess
        from tests.leakguard import session_tag
        from smolbox.network.names import tap_alias, tap_name
        import os
        def test_forgets():
            tag, bridge = session_tag(), os.environ["SMOLBOX_NET_BRIDGE"]
            subprocess.run(["ip", "netns", "add", f"sbxt-x-{tag}"], check=True)
            tap = tap_name("sbx-" + tag + "aa")
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "link", "set", tap, "alias",
                            tap_alias(bridge, "sbx-" + tag + "aa")], check=True)
            subprocess.run(["nft", "add", "table", "inet", f"smolbox_{bridge}_x"], check=True)
    """)
    assert_leak_reported(done, "netns sbxt-x-", "link sbx", "nft table inet smolbox_sbt")
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    output = done.stdout + done.stderr
    tag = output.split("netns sbxt-x-", 1)[1].split()[0]
    assert f"sbxt-x-{tag}" not in leftovers, "the guard did not remove the namespace"
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"smolbox_sbt{tag}_x" not in tables


def _dead(pid: int) -> bool:
    """Gone or a zombie (PID 1 here reaps lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_forgotten_tmux_server_fails_the_session(tmp_path: Path) -> None:
    done = run_session(tmp_path, """
        import subprocess
        def test_forgets():
            subprocess.run(["tmux", "-L", "leaky", "new-session", "-d", "-s", "s",
                            "sleep 1000"], check=True)
    """)
    assert_leak_reported(done, "tmux", "temp dir")
    # the server is gone: its socket under the session's TMUX_TMPDIR was removed too
    assert "tmux -L leaky" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                 text=True).stdout

"""Process identity against real child processes (no fakes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host.procs import ProcessIdentity, read_stat


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _wait_exit_keep_zombie(pid: int) -> None:
    """Block until the child exits but leave it unreaped (a zombie)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_identity_of_a_running_child(child: subprocess.Popen[bytes]) -> None:
    ident = ProcessIdentity.of(child.pid)
    raw = Path(f"/proc/{child.pid}/stat").read_text()
    assert ident.start_time == int(raw.rsplit(")", 1)[1].split()[19])
    assert ident.is_alive()
    assert ProcessIdentity.of(child.pid) == ident  # stable


def test_wrong_start_time_is_a_reused_pid_and_never_signalled(
        child: subprocess.Popen[bytes]) -> None:
    real = ProcessIdentity.of(child.pid)
    impostor = ProcessIdentity(child.pid, real.start_time + 1)
    assert not impostor.is_alive()
    with pytest.raises(errors.ProcessGoneError) as caught:
        impostor.signal(signal.SIGKILL)
    assert caught.value.pid == child.pid
    assert real.is_alive() and child.poll() is None  # untouched


def test_signal_reaches_the_process_and_zombie_is_not_alive(
        child: subprocess.Popen[bytes]) -> None:
    ident = ProcessIdentity.of(child.pid)
    ident.signal(signal.SIGTERM)
    _wait_exit_keep_zombie(child.pid)
    stat = read_stat(child.pid)
    assert stat is not None and stat.state == "Z"
    assert not ident.is_alive()
    with pytest.raises(errors.ProcessGoneError):
        ProcessIdentity.of(child.pid)
    with pytest.raises(errors.ProcessGoneError):
        ident.signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGTERM
    assert read_stat(child.pid) is None
    assert not ident.is_alive()
    with pytest.raises(errors.ProcessGoneError):
        ident.signal(signal.SIGTERM)


def test_missing_pid() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert read_stat(pid_max + 1) is None
    with pytest.raises(errors.ProcessGoneError) as caught:
        ProcessIdentity.of(pid_max + 1)
    assert caught.value.code == "PROCESS_GONE" and caught.value.help


def test_comm_with_parentheses_and_spaces_parses(tmp_path: Path) -> None:
    sleeper = shutil.which("sleep")
    assert sleeper is not None
    odd = tmp_path / "a) (b c)"
    shutil.copy(sleeper, odd)
    proc = subprocess.Popen([str(odd), "600"])
    try:
        stat = read_stat(proc.pid)
        assert stat is not None
        assert (stat.comm, stat.ppid) == ("a) (b c)", os.getpid())
        assert ProcessIdentity.of(proc.pid).start_time == stat.start_time
    finally:
        proc.kill()
        proc.wait()

"""The CLI's exit codes (README "Exit codes"), through the real `smolbox` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.paths import Paths
from smolbox.store import MachineRecord, Store
from tests.leakguard import session_tag

SMOLBOX = str(Path(sys.executable).with_name("smolbox"))


def smolbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMOLBOX, *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.vm
def test_exec_and_run_pass_the_guest_exit_code_through(default_image: object) -> None:
    run = smolbox("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert run.returncode == 3, run.stderr
    assert run.stdout == "out\n" and "err\n" in run.stderr
    name = smolbox("create").stdout.strip()
    try:
        assert smolbox("exec", name, "--", "true").returncode == 0
        assert smolbox("exec", name, "--", "sh", "-c", "kill -9 $$").returncode == 128 + 9
    finally:
        assert smolbox("rm", "-f", name).returncode == 0


def test_errors_exit_by_family_and_print_code_message_help() -> None:
    missing = smolbox("info", "no-such-machine")
    assert missing.returncode == 3
    assert "VM_NOT_FOUND" in missing.stderr and "help:" in missing.stderr
    invalid = smolbox("--json", "create", "--memory", "1")
    assert invalid.returncode == 2
    body = json.loads(invalid.stderr.strip().splitlines()[-1])
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] == "memory_mib"
    assert smolbox("no-such-command").returncode == 2


def smolbox_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def run_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMOLBOX, "--json", *args], capture_output=True, text=True,
                          timeout=300, check=False, env=env)


def error_body(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    body = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert isinstance(body, dict)
    return body


def test_exit_1_for_a_poisoned_store_row(tmp_path: Path) -> None:
    """StatePoisonedError (no family of its own): a machine row whose config is not JSON."""
    home = tmp_path / "home"
    env = smolbox_env(SMOLBOX_HOME=str(home), SMOLBOX_IMAGES=str(home / "images"),
                      SMOLBOX_RUN=str(tmp_path / "run"))
    paths = Paths(home=home, images=home / "images", cache=tmp_path / "cache",
                  run=tmp_path / "run")
    paths.ensure(paths.home)
    with Store.open(paths.database) as store:
        store.insert_machine(MachineRecord(id="sbx-0badc0de", name="poisoned", config={},
                                           image_ref="default"))
    db = sqlite3.connect(paths.database)
    with db:
        db.execute("UPDATE machines SET config = '{not json' WHERE id = 'sbx-0badc0de'")
    db.close()
    done = run_with(env, "info", "poisoned")
    assert done.returncode == 1, done.stderr
    assert error_body(done)["code"] == "STATE_POISONED"


def test_exit_7_for_a_network_that_cannot_be_set_up(tmp_path: Path) -> None:
    """NetworkSetupError: the configured network namespace does not exist."""
    env = smolbox_env(SMOLBOX_HOME=str(tmp_path / "home"), SMOLBOX_RUN=str(tmp_path / "run"),
                      SMOLBOX_IMAGES=str(tmp_path / "home" / "images"),
                      SMOLBOX_NET_NETNS=f"sbxt-missing-{session_tag()}")
    done = run_with(env, "reconcile")
    assert done.returncode == 7, done.stderr
    assert error_body(done)["code"] == "NETWORK_SETUP_FAILED"


def test_exit_11_when_the_server_is_unreachable() -> None:
    """ConnectionError from the remote backend: nothing listens on the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_with(smolbox_env(SMOLBOX_URL=f"http://127.0.0.1:{port}"), "list")
    assert done.returncode == 11, done.stderr
    assert error_body(done)["code"] == "CONNECTION_ERROR"


def test_exit_10_when_qemu_cannot_start(tmp_path: Path, default_image: object) -> None:
    """SpawnError: a QEMU that exits at once (failure injection: a fake binary on PATH)."""
    fake = tmp_path / "fake_qemu"
    fake.mkdir()
    binary = fake / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\necho 'fake_qemu: refusing to start' >&2\nexit 1\n")
    binary.chmod(0o755)
    # Unjailed: a jailed QEMU is exec'd inside its chroot, where a binary from this
    # temp dir does not exist (that is a JAILER_ERROR, tested in tests/vmm/).
    env = smolbox_env(PATH=f"{fake}:{os.environ['PATH']}", SMOLBOX_JAIL="off")
    done = run_with(env, "create", "--name", "never-starts")
    assert done.returncode == 10, done.stderr
    assert error_body(done)["code"] == "SPAWN_FAILED", error_body(done)
    assert smolbox("info", "never-starts").returncode == 3  # nothing left behind


@pytest.fixture(scope="module")
def box(default_image: object) -> Iterator[str]:
    name = smolbox("create").stdout.strip()
    assert name
    yield name
    assert smolbox("rm", "-f", name).returncode == 0


@pytest.mark.vm
def test_exit_8_when_a_command_times_out(box: str) -> None:
    done = subprocess.run([SMOLBOX, "--json", "exec", "--timeout", "1", box, "--", "sleep", "60"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 8, done.stderr
    assert error_body(done)["code"] == "OPERATION_TIMEOUT"


@pytest.mark.vm
def test_exit_9_for_a_guest_agent_error(box: str) -> None:
    done = subprocess.run([SMOLBOX, "--json", "exec", "--user", "no-such-user-xyz", box, "--",
                           "true"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 9, done.stderr
    assert error_body(done)["code"] == "GUEST_AGENT_ERROR"


@pytest.mark.vm
def test_exit_130_when_interrupted_during_a_long_exec(box: str) -> None:
    # The guest command ignores SIGINT, so a 130 cannot be its own exit status passed
    # through: it must be the CLI's answer to being interrupted.
    proc = subprocess.Popen([SMOLBOX, "exec", box, "--", "sh", "-c",
                             "trap '' INT; echo started; sleep 600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"  # the command really runs
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # the machine is still usable after the interrupted exec
    assert smolbox("exec", box, "--", "true").returncode == 0

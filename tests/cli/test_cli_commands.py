"""The new CLI commands as separate processes: snapshot, fork, pause/resume, cp, serve.

Machines here are made by the CLI itself (each command is its own process and
its own agent connection); the test process only inspects the shared store and
cleans up with the session engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smolbox import errors
from smolbox.engine.engine import Engine


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "smolbox"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    done = cli("--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def error_of(done: subprocess.CompletedProcess[str]) -> errors.SmolboxError:
    """With --json the error is one catalogue body on stderr."""
    return errors.from_wire(done.stderr.strip().splitlines()[-1])


def test_errors_print_code_message_and_help() -> None:
    done = cli("snapshot", "rm", "no-such-snapshot")
    assert done.returncode == 3
    assert "error[SNAPSHOT_NOT_FOUND]: Snapshot 'no-such-snapshot' not found" in done.stderr
    assert "help: List snapshots with `smolbox snapshot list`" in done.stderr
    as_json = cli("--json", "pause", "no-such-box")
    assert as_json.returncode == 3
    err = error_of(as_json)
    assert isinstance(err, errors.VMNotFoundError) and err.details["vm_id"] == "no-such-box"
    bad_cp = cli("cp", "./a", "./b")
    assert bad_cp.returncode == 2 and "VALIDATION_ERROR" in bad_cp.stderr


def test_shell_completion_is_available() -> None:
    done = cli("--show-completion", "bash")
    assert done.returncode == 0 and "_SMOLBOX_COMPLETE" in done.stdout


@pytest.fixture
def cleanup(engine: Engine) -> Iterator[list[str]]:
    """Names of machines/snapshots to remove whatever happens."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(errors.NotFoundError):
            engine.delete(name, force=True)
        with contextlib.suppress(errors.NotFoundError):
            engine.delete_snapshot(name)


@pytest.mark.vm
def test_pause_snapshot_fork_and_remove(engine: Engine, cleanup: list[str],
                                        tmp_path: Path) -> None:
    cleanup += ["cli-src", "cli-clone", "cli-snap"]
    assert cli_json("create", "--name", "cli-src")["name"] == "cli-src"

    assert cli_json("pause", "cli-src") == {"name": "cli-src", "state": "paused"}
    refused = cli("--json", "exec", "cli-src", "--", "true")
    assert isinstance(error_of(refused), errors.InvalidTransitionError)
    assert refused.returncode == 4
    assert cli_json("resume", "cli-src")["state"] == "running"

    (tmp_path / "note.txt").write_text("snapshotted")
    assert cli("cp", str(tmp_path / "note.txt"), "cli-src:/root/note.txt").returncode == 0
    snap = cli_json("snapshot", "create", "cli-src", "cli-snap")
    assert snap["name"] == "cli-snap" and snap["vm_id"] == engine.get("cli-src").id
    again = cli("--json", "snapshot", "create", "cli-src", "cli-snap")
    assert isinstance(error_of(again), errors.SnapshotAlreadyExistsError)
    assert "cli-snap" in {s["name"] for s in cli_json("snapshot", "list")}
    assert [s["name"] for s in cli_json("snapshot", "list", "--machine", "cli-src")] == \
        ["cli-snap"]

    clones = cli_json("fork", "cli-snap", "--name", "cli-clone", "-e", "FORKED=1")
    assert [c["name"] for c in clones] == ["cli-clone"]
    assert clones[0]["source_snapshot"] == "cli-snap"
    out = cli("exec", "cli-clone", "--", "sh", "-c", "echo $FORKED; cat /root/note.txt")
    assert out.stdout == "1\nsnapshotted"

    assert cli("rm", "-f", "cli-clone", "cli-src").returncode == 0
    assert cli_json("snapshot", "rm", "cli-snap") == {"deleted": ["cli-snap"]}
    assert {m.name for m in engine.list_machines()}.isdisjoint({"cli-src", "cli-clone"})
    with pytest.raises(errors.SnapshotNotFoundError):
        engine.get_snapshot("cli-snap")


@pytest.fixture
def served(engine: Engine) -> Iterator[dict[str, str]]:
    """`smolbox serve --port 0` as its own process; stopped with SIGTERM."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "smolbox"), "--json", "serve",
                             "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, proc.stderr.read() if proc.stderr else ""
        info = json.loads(first)
        yield {"url": info["url"], "token_file": info["token_file"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # uvicorn shuts down gracefully, then re-raises the signal it caught
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def test_serve_binds_loopback_with_token_auth(served: dict[str, str]) -> None:
    assert served["url"].startswith("http://127.0.0.1:")
    token_file = Path(served["token_file"])
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert httpx.get(served["url"] + "/healthz").json() == {"status": "ok"}
    denied = httpx.get(served["url"] + "/v1/machines")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "AUTH_FAILED"
    allowed = httpx.get(served["url"] + "/v1/machines",
                        headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200 and isinstance(allowed.json(), list)

    # the CLI itself can go through the server
    env = {"SMOLBOX_URL": served["url"], "SMOLBOX_TOKEN": token}
    assert isinstance(cli_json("snapshot", "list", env=env), list)
    wrong = cli("--json", "snapshot", "list", env={**env, "SMOLBOX_TOKEN": "nope"})
    assert wrong.returncode == 12 and isinstance(error_of(wrong), errors.AuthError)


def test_serve_refuses_no_auth_off_loopback() -> None:
    done = cli("serve", "--no-auth", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert "Refusing to serve without auth" in done.stderr

"""The real ``e2b`` SDK (pinned, own venv) drives a real smolbox server with real VMs."""

from __future__ import annotations

import contextlib
import time

import pytest
from e2b_harness import E2BServer

from smolbox import errors
from smolbox.sdk import Machine

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1800)]

STEPS = ["create", "run", "on_stdout", "exit_code", "cwd_envs_user",
         "background_list_connect_kill", "send_stdin", "files", "files_20mib",
         "set_timeout_get_info", "list", "kill"]


def passed(stdout: str) -> list[str]:
    return [line[3:] for line in stdout.splitlines() if line.startswith("ok ")]


def test_sync_sdk_scenario(e2b_server: E2BServer) -> None:
    result = e2b_server.run("sync_scenario.py")
    expected = [*STEPS[:4], "command_timeout", *STEPS[4:10], "pause_connect", *STEPS[10:]]
    assert passed(result.stdout) == expected, result.stderr[-3000:]
    assert result.returncode == 0


def test_async_sdk_scenario(e2b_server: E2BServer) -> None:
    result = e2b_server.run("async_scenario.py")
    assert passed(result.stdout) == STEPS, result.stderr[-3000:]
    assert result.returncode == 0


def test_refusals_and_expiry(e2b_server: E2BServer) -> None:
    """A wrong API key and a missing envd token are refused; timeout=3 really kills."""
    result = e2b_server.run("refusals_scenario.py")
    assert passed(result.stdout) == ["wrong_api_key", "missing_envd_token"], \
        result.stderr[-3000:]
    assert result.returncode == 0
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                 if line.startswith(("sandbox ", "expired_after ")))
    with pytest.raises(errors.VMNotFoundError):
        e2b_server.engine.get(lines["sandbox"])
    print("expired after", lines["expired_after"], "s (timeout=3)")


def test_native_lifetime_through_the_server(e2b_server: E2BServer) -> None:
    """The native API gets the same lifetime: MachineConfig.timeout, expires_at in info,
    set_timeout, and the server's reaper deleting the machine when it runs out."""
    machine = Machine.create(url=e2b_server.url, token=e2b_server.token, timeout=600)
    try:
        expires = machine.info().expires_at
        assert expires is not None and expires > time.time() + 500
        machine.set_timeout(2)
        deadline = time.monotonic() + 60
        while True:
            try:
                Machine.connect(machine.id, url=e2b_server.url, token=e2b_server.token)
            except errors.VMNotFoundError:
                break
            assert time.monotonic() < deadline, "set_timeout(2) did not end the machine"
            time.sleep(0.25)
    finally:
        with contextlib.suppress(errors.VMNotFoundError):
            machine.delete(force=True)

"""The CLI's exit codes (README "Exit codes"), through the real `smolbox` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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

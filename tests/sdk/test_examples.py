"""The examples run, against real machines: imported with the session engine, and
one as a program in its own process (as a user would start it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from smolbox.engine.engine import Engine
from smolbox.sdk import LocalBackend

pytestmark = pytest.mark.vm
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_tool_runs_code_and_bounds_it(engine: Engine) -> None:
    tool = load("agent_tool")
    backend = LocalBackend(engine)
    ok = tool.run_code("import sys; print(6*7); print('warn', file=sys.stderr)",
                       backend=backend)
    assert (ok["ok"], ok["exit_code"], ok["stdout"], ok["stderr"]) == (True, 0, "42\n",
                                                                      "warn\n")
    long = tool.run_code("print('x' * 50000); raise SystemExit(3)", backend=backend,
                         max_output=300)
    assert long["exit_code"] == 3 and long["truncated"] and len(long["stdout"]) < 400
    assert "characters truncated" in long["stdout"]
    slow = tool.run_code("sleep 20", language="bash", timeout=1, backend=backend)
    assert slow["ok"] is False and slow["error"]["code"] == "OPERATION_TIMEOUT"
    assert tool.run_code("x", language="cobol")["error"]["code"] == "VALIDATION_ERROR"
    before = {m.id for m in engine.list_machines()}
    tool.run_code("print(1)", backend=backend)
    assert {m.id for m in engine.list_machines()} == before  # sandboxes are deleted


def test_agent_tool_as_a_program() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "agent_tool.py"), "print(6*7)"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stdout"] == "42\n"


def test_error_handling_patterns(engine: Engine) -> None:
    example = load("error_handling")
    seen = example.demo(LocalBackend(engine))
    assert seen == [
        "class: no machine 'does-not-exist'; create one first",
        "code: too slow (limit 1 s)",
        "code: missing file /etc/no-such-file",
        "retry: done",
        "cleanup: body raised the agent's own bug",
        "cleanup: machine is gone",
    ]

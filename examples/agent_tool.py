"""A code-execution tool for LLM agents: run a snippet in a fresh, disposable sandbox.

Plug ``run_code`` into any agent framework that calls Python functions as tools
(``TOOL_SPEC`` is the JSON schema most of them want). Every call gets a new
microVM, so nothing one snippet does can affect the next, and the machine is
deleted even if the snippet hangs or the host code raises.

What an agent needs from such a tool, and how this one provides it:
- bounded time: ``timeout`` kills the snippet's whole process group in the guest;
- bounded output: stdout/stderr are cut to ``max_output`` characters, keeping the
  head and the tail (where tracebacks are) with a marker in between;
- errors it can act on: a result dict, never an exception, with the catalogue's
  ``code`` and ``help`` when the sandbox itself failed.

Run it:  python examples/agent_tool.py 'print(6*7)'
Remote:  SMOLBOX_URL=http://127.0.0.1:7777 SMOLBOX_TOKEN=... python examples/agent_tool.py ...
"""

from __future__ import annotations

import json
import sys
from typing import Any

from smolbox import Machine, errors
from smolbox.sdk.backend import Backend

RUNNERS = {"python": ["python3", "/tmp/snippet"], "bash": ["bash", "/tmp/snippet"],
           "sh": ["sh", "/tmp/snippet"]}

TOOL_SPEC: dict[str, Any] = {
    "name": "run_code",
    "description": "Run a code snippet in a fresh, isolated Linux sandbox (no network) and "
                   "return its exit code, stdout and stderr.",
    "input_schema": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "The program to run."},
            "language": {"type": "string", "enum": sorted(RUNNERS), "default": "python"},
            "timeout": {"type": "number", "description": "Seconds before it is killed.",
                        "default": 30},
        },
        "required": ["code"],
    },
}


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """Keep the first and last parts of ``text`` within ``limit`` characters."""
    if len(text) <= limit:
        return text, False
    head = limit // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n…[{cut} characters truncated]…\n{text[-tail:]}", True


def run_code(code: str, language: str = "python", *, timeout: float = 30.0,
             max_output: int = 8000, memory_mib: int = 256,
             backend: Backend | None = None) -> dict[str, Any]:
    """Run ``code`` in a new sandbox; always returns a JSON-ready dict."""
    if language not in RUNNERS:
        return {"ok": False, "error": {"code": "VALIDATION_ERROR",
                                       "message": f"unsupported language {language!r}",
                                       "help": f"Use one of {sorted(RUNNERS)}."}}
    try:
        with Machine.create(backend=backend, memory_mib=memory_mib) as sandbox:
            sandbox.files.write("/tmp/snippet", code)
            result = sandbox.exec(RUNNERS[language], cwd="/tmp", timeout=timeout)
    except errors.OperationTimeoutError as err:
        return {"ok": False, "error": {"code": err.code,
                                       "message": f"the code ran longer than {timeout:g} s "
                                                  "and was killed",
                                       "help": "Make it faster, or ask for a longer timeout."}}
    except errors.SmolboxError as err:
        return {"ok": False, "error": {"code": err.code, "message": err.message,
                                       "help": err.help, "retryable": err.retryable}}
    stdout, cut_out = truncate(result.stdout, max_output)
    stderr, cut_err = truncate(result.stderr, max_output)
    return {"ok": result.exit_code == 0, "exit_code": result.exit_code,
            "signal": result.signal, "stdout": stdout, "stderr": stderr,
            "truncated": cut_out or cut_err, "duration_seconds": round(result.duration, 3)}


def main(argv: list[str]) -> int:
    if not argv:
        print(json.dumps(TOOL_SPEC, indent=2))
        return 0
    language = argv[1] if len(argv) > 1 else "python"
    outcome = run_code(argv[0], language)
    print(json.dumps(outcome, indent=2))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

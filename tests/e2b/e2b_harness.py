"""Helpers for the E2B tests: the pinned SDK's virtualenv and a scenario runner.

Why a separate virtualenv: ``e2b`` pins ``connectrpc<0.13`` and ``protobuf-py<0.7``;
smolbox must not depend on them. The venv lives in the shared cache, keyed by the
pinned version, so it is made once per machine (pip from PyPI, ~1 min) and reused.
Scenario scripts run in it as subprocesses against ``smolbox serve`` on loopback.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from smolbox.engine.engine import Engine

E2B_VERSION = "2.63.0"
SCENARIOS = Path(__file__).parent / "scenarios"


def ensure_e2b_venv(cache: Path) -> Path:
    """The python of a virtualenv holding ``e2b==E2B_VERSION`` (made once, under a lock)."""
    root = cache / f"e2b-venv-{E2B_VERSION}"
    python = root / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"e2b-venv-{E2B_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = [str(python), "-c", f"import e2b, importlib.metadata as m; "
                 f"assert m.version('e2b') == '{E2B_VERSION}'"]
        if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
            return python
        venv.create(root, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"e2b=={E2B_VERSION}"],
                       check=True, timeout=900)
    return python


@dataclass
class E2BServer:
    url: str
    token: str
    engine: Engine
    python: Path

    def run(self, scenario: str, *, api_key: str | None = None,
            timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """Run ``scenarios/<scenario>`` with the e2b venv against this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
        env.update(E2B_API_URL=self.url, E2B_SANDBOX_URL=self.url,
                   E2B_API_KEY=api_key or self.token)
        result = subprocess.run([str(self.python), str(SCENARIOS / scenario)], env=env,
                                capture_output=True, text=True, timeout=timeout)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr[-4000:])
        return result

"""What the jail costs: create -> first exec, and PSS per idle clone, jailed vs not.

``python -m bench.jail [--runs N]`` runs both settings in the same process, one
after the other, in fresh smolbox homes (the same machine, the same load), and
prints medians as JSON. Figures, not asserts: the target is a ratio <= 1.10 for
latency and PSS within 10 % (the template RAM file must stay shared under jails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.engine.launcher import QemuLauncher
from smolbox.host.jailhost import JailSettings
from smolbox.paths import Paths


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def measure(jailed: bool, runs: int, idle: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="sbx-bench-jail-"))
    paths = Paths(home=base / "home", images=Paths.from_env().images,
                  cache=Paths.from_env().cache, run=base / "run")
    launcher = QemuLauncher(JailSettings(enabled=jailed, **_range()))
    try:
        return _measure(Engine(paths, launcher=launcher), jailed, runs, idle)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _measure(engine: Engine, jailed: bool, runs: int, idle: int) -> dict[str, Any]:
    with engine:
        engine.delete(engine.create(MachineConfig()).id, force=True)  # builds the template
        latencies = []
        for _ in range(runs):
            start = time.perf_counter()
            record = engine.create(MachineConfig())
            engine.exec(record.id, ["true"])
            latencies.append(time.perf_counter() - start)
            engine.delete(record.id, force=True)
        clones = [engine.create(MachineConfig()) for _ in range(idle)]
        time.sleep(3)  # idle
        pss = [pss_kib(engine.get(c.id).pid or 0) for c in clones]
        for clone in clones:
            engine.delete(clone.id, force=True)
    return {"jailed": jailed, "n": runs, "create_to_first_exec_median_s":
            statistics.median(latencies), "idle_clones": idle,
            "pss_per_idle_clone_median_kib": statistics.median(pss)}


def _range() -> dict[str, Any]:
    settings = JailSettings.from_env()
    return {"uids": settings.uids, "state_dir": settings.state_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("SMOLBOX_JAIL", "on")
    plain = measure(False, args.runs, args.idle)
    jailed = measure(True, args.runs, args.idle)
    print(json.dumps({
        "unjailed": plain, "jailed": jailed,
        "latency_ratio": jailed["create_to_first_exec_median_s"]
        / plain["create_to_first_exec_median_s"],
        "pss_ratio": jailed["pss_per_idle_clone_median_kib"]
        / max(1, plain["pss_per_idle_clone_median_kib"]),
    }, indent=2))


if __name__ == "__main__":
    main()

"""What the jail costs: create -> first exec, and PSS per idle clone, jailed vs not.

``python -m bench.jail [--runs N]`` runs both settings in the same process, their
creates interleaved, in fresh smolbox homes (the same machine, the same load), and
prints medians and p95 as JSON. Figures, not asserts: the target is a ratio <= 1.10 for
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


def _engine(base: Path, jailed: bool) -> Engine:
    paths = Paths(home=base / "home", images=Paths.from_env().images,
                  cache=Paths.from_env().cache, run=base / "run")
    return Engine(paths, launcher=QemuLauncher(JailSettings(enabled=jailed, **_range())))


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def compare(runs: int, idle: int) -> dict[str, Any]:
    """Both settings in fresh homes, their creates interleaved (jailed, unjailed,
    jailed...) so a load change on the host hits both alike."""
    bases = {jailed: Path(tempfile.mkdtemp(prefix="sbx-bench-jail-"))
             for jailed in (True, False)}
    engines = {jailed: _engine(base, jailed) for jailed, base in bases.items()}
    try:
        latencies: dict[bool, list[float]] = {True: [], False: []}
        pss: dict[bool, list[int]] = {True: [], False: []}
        for engine in engines.values():
            engine.delete(engine.create(MachineConfig()).id, force=True)  # the template
        for _ in range(runs):
            for jailed, engine in engines.items():
                start = time.perf_counter()
                record = engine.create(MachineConfig())
                engine.exec(record.id, ["true"])
                latencies[jailed].append(time.perf_counter() - start)
                engine.delete(record.id, force=True)
        for jailed, engine in engines.items():
            clones = [engine.create(MachineConfig()) for _ in range(idle)]
            time.sleep(3)  # idle
            pss[jailed] = [pss_kib(engine.get(c.id).pid or 0) for c in clones]
            for clone in clones:
                engine.delete(clone.id, force=True)
    finally:
        for engine in engines.values():
            engine.close()
        for base in bases.values():
            shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {}
    for jailed, name in ((False, "unjailed"), (True, "jailed")):
        result[name] = {"n": runs, "create_to_first_exec_median_s":
                        statistics.median(latencies[jailed]),
                        "create_to_first_exec_p95_s": _p95(latencies[jailed]),
                        "idle_clones": idle,
                        "pss_per_idle_clone_median_kib": statistics.median(pss[jailed])}
    result["latency_ratio"] = (result["jailed"]["create_to_first_exec_median_s"]
                               / result["unjailed"]["create_to_first_exec_median_s"])
    result["pss_ratio"] = (result["jailed"]["pss_per_idle_clone_median_kib"]
                           / max(1, result["unjailed"]["pss_per_idle_clone_median_kib"]))
    return result


def _range() -> dict[str, Any]:
    settings = JailSettings.from_env()
    return {"uids": settings.uids, "state_dir": settings.state_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("SMOLBOX_JAIL", "on")
    print(json.dumps(compare(args.runs, args.idle), indent=2))

if __name__ == "__main__":
    main()

"""Kill -9 at random points of every multi-step operation, then check nothing is left.

    .venv/bin/python -m bench.reliability [--kills 50] [--seed 1] [--json out.json]

Why: a sandbox host's everyday faults are processes dying mid-operation (an agent
crashing, a CI job cancelled, a server restarted). For each kill point a worker
process (``bench/reliability_worker.py``, or ``smolbox serve`` for the server
operation) starts one operation; after a random delay it is SIGKILLed; then a fresh
``smolbox reconcile`` process runs, and the harness checks, from yet another engine:
no machine row in a transitional state or owned by a dead process, no pending
snapshot, no QEMU that no row accounts for (snapshot helpers included), no temp or
orphan directory, the names the operation used are reusable, and the next create
works. ``tests/reliability/`` runs a short version in the suite; the figures of the
long run go to ``bench/RELIABILITY.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.reliability_worker import TEMPLATE_BUILD_MEMORY_MIB
from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.images.testing import ensure_default_image
from smolbox.paths import Paths
from smolbox.store.states import MachineState

OPERATIONS = ("create", "template", "snapshot", "fork", "restore", "delete", "server")
# Rough duration of each operation under TCG on 2 cores: delays are drawn below it,
# so most kills land inside the operation (some before it starts or after it ends).
TYPICAL_SECONDS = {"create": 0.8, "template": 3.5, "snapshot": 1.5, "fork": 0.8,
                   "restore": 0.5, "delete": 0.4, "server": 1.0}
WORKER_START_TIMEOUT = 60.0


@dataclass
class KillOutcome:
    operation: str
    delay_s: float
    finished_before_kill: bool
    problems: list[str] = field(default_factory=list)
    reconcile: dict[str, Any] = field(default_factory=dict)


def live_qemu_pids(roots: list[Path]) -> set[int]:
    """QEMU processes (not zombies) whose argv names one of ``roots``."""
    marks = [str(r.resolve()).encode() for r in roots]
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"qemu-system" in argv.split(b"\0")[0] and state != "Z" and any(
                m in argv for m in marks):
            found.add(int(entry))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Harness:
    """One isolated smolbox home with the machines the operations act on."""

    def __init__(self, root: Path) -> None:
        self.paths = Paths(home=root / "home", images=root / "home" / "images",
                           cache=Paths.from_env().cache, run=Path(tempfile.mkdtemp(prefix="sbr-")))
        self.env = {**os.environ, "SMOLBOX_HOME": str(self.paths.home),
                    "SMOLBOX_IMAGES": str(self.paths.images), "SMOLBOX_RUN": str(self.paths.run),
                    "SMOLBOX_CACHE": str(self.paths.cache)}
        self.counter = 0

    def engine(self) -> Engine:
        return Engine(self.paths)

    def setup(self) -> None:
        ensure_default_image(self.paths)
        with self.engine() as eng:
            eng.create(MachineConfig(name="src"))
            eng.snapshot("src", "base")
            eng.fork("base", 1, names=["victim"])

    def teardown(self) -> None:
        with self.engine() as eng:
            for record in eng.list_machines(None):
                with suppress(errors.SmolboxError):
                    eng.delete(record.id, force=True)
            for snap in reversed(eng.store.list_snapshots()):
                with suppress(errors.SmolboxError):
                    eng.delete_snapshot(snap.id)
        for pid in live_qemu_pids([self.paths.home, self.paths.run]):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(self.paths.run)], check=False)

    # ---------------------------------------------------------------- one point
    def kill_point(self, operation: str, delay: float) -> KillOutcome:
        self.counter += 1
        name = f"k{self.counter}"
        self._prepare(operation, name)
        if operation == "server":
            finished = self._kill_server(name, delay)
        else:
            finished = self._kill_worker(operation, name, delay)
        outcome = KillOutcome(operation, round(delay, 3), finished)
        done = subprocess.run([sys.executable, "-m", "smolbox.cli.main", "--json", "reconcile"],
                              env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            outcome.problems.append(f"reconcile exited {done.returncode}: {done.stderr[-400:]}")
        else:
            outcome.reconcile = json.loads(done.stdout)
        outcome.problems += self.check(operation, name)
        return outcome

    def _prepare(self, operation: str, name: str) -> None:
        with self.engine() as eng:
            if operation == "delete":
                eng.create(MachineConfig(name=name))
            if operation == "template":
                for snap in eng.store.list_snapshots():
                    if (snap.manifest.get("template")
                            and snap.manifest.get("memory_mib") == TEMPLATE_BUILD_MEMORY_MIB):
                        eng.delete_snapshot(snap.id)

    def _kill_worker(self, operation: str, name: str, delay: float) -> bool:
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.reliability_worker", operation, name],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=Path(__file__).resolve().parents[1])
        try:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if line.strip() != "go":
                raise RuntimeError(f"worker for {operation} did not start: {line!r}")
            time.sleep(delay)
            finished = worker.poll() is not None
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            return finished
        finally:
            if worker.poll() is None:
                worker.kill()

    def _kill_server(self, name: str, delay: float) -> bool:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "smolbox.cli.main", "serve", "--no-auth", "--port", str(port),
             "--log-level", "warning"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + WORKER_START_TIMEOUT
            while True:
                with suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("smolbox serve did not come up")
                time.sleep(0.1)
            result: dict[str, Any] = {}

            def request() -> None:
                with suppress(httpx.HTTPError):
                    result["status"] = httpx.post(f"{url}/v1/machines", json={"name": name},
                                                  timeout=60).status_code

            client = threading.Thread(target=request, daemon=True)
            client.start()
            time.sleep(delay)
            finished = "status" in result
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            client.join(timeout=30)
            return finished
        finally:
            if server.poll() is None:
                server.kill()

    # -------------------------------------------------------------- the checks
    def check(self, operation: str, name: str) -> list[str]:
        problems: list[str] = []
        with self.engine() as eng:
            rows = eng.list_machines(None)
            problems += [f"machine {r.name} left {r.state}" for r in rows
                         if r.state == MachineState.CREATING]
            problems += [f"machine {r.name} still owned by dead {r.operation}" for r in rows
                         if r.owner is not None]
            problems += [f"pending snapshot {s.name}" for s in eng.store.list_pending_snapshots()]
            expected = {r.pid for r in rows if r.state in (MachineState.RUNNING,
                                                           MachineState.PAUSED)}
            orphans = live_qemu_pids([self.paths.home, self.paths.run]) - expected
            problems += [f"orphan QEMU {pid}" for pid in sorted(orphans)]
            problems += [f"temp dir {p.name}" for p in self.paths.snapshots.glob(".tmp-*")]
            ids = {r.id for r in rows}
            for root in (self.paths.machines, self.paths.run):
                problems += [f"orphan dir {p}" for p in root.glob("*")
                             if p.is_dir() and p.name not in ids]
            problems += self._names_reusable(eng, operation, name)
            try:
                assert eng.exec("src", ["true"], timeout=60).success  # not left paused
                fresh = eng.create(MachineConfig())
                assert eng.exec(fresh.id, ["true"], timeout=60).success
                eng.delete(fresh.id)
            except (errors.SmolboxError, AssertionError) as err:
                problems.append(f"next create/exec failed: {err}")
        return problems

    def _names_reusable(self, eng: Engine, operation: str, name: str) -> list[str]:
        try:
            if operation in ("create", "template", "delete", "server"):
                with suppress(errors.VMNotFoundError):
                    eng.delete(name, force=True)
                if operation != "delete":
                    memory = (TEMPLATE_BUILD_MEMORY_MIB if operation == "template"
                              else MachineConfig().memory_mib)
                    eng.delete(eng.create(MachineConfig(name=name, memory_mib=memory)).id)
            elif operation == "snapshot":
                with suppress(errors.SnapshotNotFoundError):
                    eng.delete_snapshot(name)
                eng.snapshot("src", name)
                eng.delete_snapshot(name)
            elif operation == "fork":
                names = [f"{name}-{i}" for i in range(3)]
                for clone in names:
                    with suppress(errors.VMNotFoundError):
                        eng.delete(clone, force=True)
                for record in eng.fork("base", 3, names=names):
                    eng.delete(record.id)
            elif operation == "restore":
                victim = eng.get("victim")
                if victim.state != MachineState.RUNNING:
                    eng.restore("victim", "base")
                assert eng.exec("victim", ["true"], timeout=60).success
        except (errors.SmolboxError, AssertionError) as err:
            return [f"{operation}: names not reusable / not recoverable: {err!r}"]
        return []


@contextmanager
def harness() -> Iterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="smolbox-reliability-") as root:
        made = Harness(Path(root))
        made.setup()
        try:
            yield made
        finally:
            made.teardown()


def run(kills: int, seed: int) -> list[KillOutcome]:
    """``kills`` kill points spread round-robin over the operations, random delays."""
    rng = random.Random(seed)
    outcomes: list[KillOutcome] = []
    with harness() as h:
        for i in range(kills):
            operation = OPERATIONS[i % len(OPERATIONS)]
            outcomes.append(h.kill_point(operation, rng.uniform(0, TYPICAL_SECONDS[operation])))
            print(f"[{i + 1}/{kills}] {operation}: "
                  f"{'ok' if not outcomes[-1].problems else outcomes[-1].problems}", flush=True)
    return outcomes


def summary(outcomes: list[KillOutcome]) -> dict[str, Any]:
    per_op: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = per_op.setdefault(o.operation, {"kills": 0, "clean": 0, "finished_first": 0})
        row["kills"] += 1
        row["clean"] += not o.problems
        row["finished_first"] += o.finished_before_kill
    return {"kills": len(outcomes), "clean": sum(not o.problems for o in outcomes),
            "leaks_or_failures": sum(bool(o.problems) for o in outcomes), "per_operation": per_op}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--soak", type=int, default=0, help="create/exec/delete cycles")
    parser.add_argument("--clients", type=int, default=0, help="concurrent REST clients")
    parser.add_argument("--hostile", action="store_true",
                        help="a guest freezing its agent under 50 untimed execs")
    args = parser.parse_args()
    outcomes = run(args.kills, args.seed) if args.kills else []
    result: dict[str, Any] = {"summary": summary(outcomes),
                              "outcomes": [asdict(o) for o in outcomes]}
    if args.soak or args.clients or args.hostile:
        from bench import reliability_load as load  # needs the harness defined above
        with harness() as h:
            if args.soak:
                result["soak"] = load.soak(h, args.soak)
            if args.clients:
                result["concurrent_clients"] = load.concurrent_clients(h, args.clients)
            if args.hostile:
                result["frozen_agent"] = load.frozen_agent(h)
    print(json.dumps({k: v for k, v in result.items() if k != "outcomes"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    leaks = sum(len(part.get("leaks", [])) for part in result.values() if isinstance(part, dict))
    sys.exit(0 if result["summary"]["leaks_or_failures"] == 0 and not leaks else 1)


if __name__ == "__main__":
    main()

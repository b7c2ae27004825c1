"""The load half of the reliability suite: a create/delete soak, concurrent REST
clients, and a guest that freezes its own agent — each checked for leaks after.

    .venv/bin/python -m bench.reliability --kills 0 --soak 100 --clients 40 --hostile

Run inside the same isolated home as the kill points (``bench.reliability.Harness``),
against a real ``smolbox`` server on loopback (uvicorn in a thread, real VMs).
Figures are medians / p95 / p99 with n; they go to ``bench/RELIABILITY.md``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from bench.reliability import Harness, live_qemu_pids
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.server import ServerSettings, ServerThread, create_app
from smolbox.store.states import MachineState


def percentiles(samples: list[float]) -> dict[str, float | int]:
    """n, p50, p95, p99 and max in milliseconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"n": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}


def leftovers(h: Harness, eng: Engine, keep: set[str]) -> list[str]:
    """Rows, QEMU processes and directories beyond the machines named in ``keep``."""
    rows = eng.list_machines(None)
    problems = [f"row {r.name} ({r.state})" for r in rows if r.name not in keep]
    live = {r.pid for r in rows if r.state in (MachineState.RUNNING, MachineState.PAUSED)}
    problems += [f"orphan QEMU {pid}"
                 for pid in sorted(live_qemu_pids([h.paths.home, h.paths.run]) - live)]
    ids = {r.id for r in rows}
    for root in (h.paths.machines, h.paths.run):
        problems += [f"orphan dir {p.name}" for p in root.glob("*")
                     if p.is_dir() and p.name not in ids]
    return problems


def soak(h: Harness, cycles: int) -> dict[str, Any]:
    """``cycles`` x (create from the template, exec, delete), in one engine."""
    took: list[float] = []
    failures: Counter[str] = Counter()
    with h.engine() as eng:
        keep = {r.name for r in eng.list_machines(None)}
        for _ in range(cycles):
            started = time.monotonic()
            try:
                record = eng.create(MachineConfig())
                assert eng.exec(record.id, ["true"], timeout=60).success
                eng.delete(record.id)
            except Exception as err:  # a bench counts failures instead of stopping
                failures[type(err).__name__] += 1
            took.append(time.monotonic() - started)
        return {"cycles": cycles, "failures": dict(failures), "cycle": percentiles(took),
                "leaks": leftovers(h, eng, keep)}


@contextmanager
def served(h: Harness, **settings: Any) -> Iterator[tuple[Engine, httpx.Client]]:
    with h.engine() as eng, ServerThread(create_app(ServerSettings(token=None, **settings),
                                                    engine=eng)) as server, \
            httpx.Client(base_url=server.url, timeout=300) as http:
        yield eng, http


def concurrent_clients(h: Harness, clients: int, execs_each: int = 5,
                       machines: int = 4) -> dict[str, Any]:
    """``clients`` threads, each running ``execs_each`` execs over REST, spread over
    ``machines`` machines at once."""
    with served(h) as (eng, http):
        keep = {r.name for r in eng.list_machines(None)}
        names = [f"load-{i}" for i in range(machines)]
        for name in names:
            http.post("/v1/machines", json={"name": name}).raise_for_status()
        statuses: Counter[int] = Counter()
        took: list[float] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            for _ in range(execs_each):
                started = time.monotonic()
                status = http.post(f"/v1/machines/{names[index % machines]}/exec",
                                   json={"cmd": "echo hi"}).status_code
                with lock:
                    statuses[status] += 1
                    took.append(time.monotonic() - started)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        for name in names:
            http.delete(f"/v1/machines/{name}", params={"force": True})
        return {"clients": clients, "machines": machines, "statuses": dict(statuses),
                "server_errors": sum(n for s, n in statuses.items() if s >= 500),
                "exec": percentiles(took), "leaks": leftovers(h, eng, keep)}


def frozen_agent(h: Harness, calls: int = 50) -> dict[str, Any]:
    """A guest SIGSTOPs its agent; ``calls`` untimed execs hit it at once while a
    bystander machine keeps serving execs. Default keepalive (5 + 15 s)."""
    with served(h) as (eng, http):
        keep = {r.name for r in eng.list_machines(None)}
        for name in ("frozen", "bystander"):
            http.post("/v1/machines", json={"name": name}).raise_for_status()
        started = time.monotonic()
        freeze = http.post("/v1/machines/frozen/exec", json={"cmd": "kill -STOP $PPID"})
        freeze_s = time.monotonic() - started
        stop = threading.Event()
        bystander: list[float] = []

        def use_bystander() -> None:
            while not stop.is_set():
                began = time.monotonic()
                http.post("/v1/machines/bystander/exec", json={"cmd": "true"}).raise_for_status()
                bystander.append(time.monotonic() - began)

        helper = threading.Thread(target=use_bystander, daemon=True)
        helper.start()

        def hit(_: int) -> tuple[str, float]:
            began = time.monotonic()
            body = http.post("/v1/machines/frozen/exec", json={"cmd": "true"}).json()
            return body.get("error", {}).get("code", "ok"), time.monotonic() - began

        with ThreadPoolExecutor(calls) as pool:
            outcomes = list(pool.map(hit, range(calls)))
        stop.set()
        helper.join(120)
        http.post("/v1/machines/frozen/restart").raise_for_status()
        recovered = http.post("/v1/machines/frozen/exec", json={"cmd": "true"}).status_code
        for name in ("frozen", "bystander"):
            http.delete(f"/v1/machines/{name}", params={"force": True})
        return {"freezing_exec": {"code": freeze.json().get("error", {}).get("code"),
                                  "seconds": round(freeze_s, 1)},
                "calls": calls, "codes": dict(Counter(code for code, _ in outcomes)),
                "call": percentiles([t for _, t in outcomes]),
                "bystander_exec": percentiles(bystander),
                "recovered_after_restart": recovered == 200,
                "leaks": leftovers(h, eng, keep)}

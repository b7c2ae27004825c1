"""Footprint of idle machines: PSS/RSS and CPU each, and how many fit in a budget.

Why PSS: clones share the template's RAM pages (see bench/procstat.py), so the
sum of their PSS is what the host really pays. Cold-booted machines are measured
alongside, so the saving from sharing is visible in the same run. The density
probe is bounded three ways (memory budget, machine cap, time limit) and says
which bound stopped it.
"""

from __future__ import annotations

import time

from bench.procstat import Memory, idle_cpu_percent, memory_of
from bench.profile import Counts
from bench.results import Metric, RunRecord, Target
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine

GROUP = "density"
SETTLE_S = 2.0


def _pid(engine: Engine, vm: str) -> int:
    pid = engine.get(vm).pid
    if pid is None:
        raise RuntimeError(f"machine {vm} has no QEMU pid")
    return pid


def run_idle(record: RunRecord, counts: Counts, engine: Engine) -> None:
    """Start clones and cold machines, let them settle, then read memory and CPU."""
    kinds = {"clone": [engine.create(MachineConfig()).id for _ in range(counts.idle_clones)],
             "cold": [engine.create(MachineConfig(from_template=False)).id
                      for _ in range(counts.idle_cold)]}
    try:
        time.sleep(min(SETTLE_S, counts.idle_window_s))
        pids = {kind: [_pid(engine, vm) for vm in vms] for kind, vms in kinds.items()}
        every = pids["clone"] + pids["cold"]
        cpu = dict(zip(every, idle_cpu_percent(every, counts.idle_window_s), strict=True))
        for kind, kind_pids in pids.items():
            mems: list[Memory] = [memory_of(pid) for pid in kind_pids]
            target = Target("<=", 80, "MiB", "issue 5, 256 MiB guest") if kind == "clone" else None
            record.add(Metric(f"idle_pss_{kind}", f"PSS per idle {kind} (256 MiB guest)", GROUP,
                              "MiB", [m.pss_mib for m in mems], target=target,
                              note="QEMU PSS from /proc/PID/smaps_rollup"))
            record.add(Metric(f"idle_rss_{kind}", f"RSS per idle {kind}", GROUP, "MiB",
                              [m.rss_mib for m in mems], note="counts shared pages in full"))
            record.add(Metric(f"idle_cpu_{kind}", f"CPU per idle {kind}", GROUP, "% of a core",
                              [cpu[pid] for pid in kind_pids],
                              note=f"utime+stime over {counts.idle_window_s:g} s"))
    finally:
        for vms in kinds.values():
            for vm in vms:
                engine.delete(vm, force=True)


def run_max_concurrent(record: RunRecord, counts: Counts, engine: Engine) -> None:
    """Add idle clones one at a time until the PSS sum, the cap or the time limit says stop."""
    made: list[str] = []
    pss_sum = 0.0
    started = time.monotonic()
    limited_by = "cap"
    try:
        while len(made) < counts.density_cap:
            if time.monotonic() - started > counts.density_time_limit_s:
                limited_by = "time limit"
                break
            made.append(engine.create(MachineConfig()).id)
            pss_sum = sum(memory_of(_pid(engine, vm)).pss_mib for vm in made)
            if pss_sum >= counts.density_budget_mib:
                limited_by = "memory budget"
                break
        start_seconds = time.monotonic() - started
        time.sleep(min(SETTLE_S, counts.idle_window_s))
        pids = [_pid(engine, vm) for vm in made]
        mems = [memory_of(pid) for pid in pids]
        cpu = idle_cpu_percent(pids, counts.idle_window_s)
        pss_sum = sum(m.pss_mib for m in mems)
        record.add(Metric("density_pss", f"PSS per clone with {len(made)} idle clones", GROUP,
                          "MiB", [m.pss_mib for m in mems],
                          note="all machines alive at once"))
        per_machine = pss_sum / len(made) if made else 0.0
        record.facts["max_concurrent"] = {
            "machines": len(made), "limited_by": limited_by,
            "budget_mib": counts.density_budget_mib, "cap": counts.density_cap,
            "pss_sum_mib": round(pss_sum, 1),
            "rss_sum_mib": round(sum(m.rss_mib for m in mems), 1),
            "cpu_sum_percent": round(sum(cpu), 1),
            "projected_machines_in_budget": (int(counts.density_budget_mib // per_machine)
                                             if per_machine else None),
            "seconds_to_start_all": round(start_seconds, 1),
        }
    finally:
        for vm in made:
            engine.delete(vm, force=True)

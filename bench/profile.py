"""How many repetitions each measurement gets: the full run and ``--quick``.

Why one table: the full run must finish in under 15 minutes on a fresh 2-core TCG
host (cold boots are 1-4 s each there; about 4 minutes in all, plus the image build
of a first run), while every figure still has enough runs for a median and a p95;
``--quick`` proves the suite works end to end in about a minute (the test suite
uses it), and its figures are not worth quoting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Counts:
    plain_boots: int = 12
    image_boots: int = 5
    cold_boots: int = 12
    template_creates: int = 40
    fork_sizes: tuple[int, ...] = (1, 4, 8)
    fork_repeats: tuple[int, ...] = (10, 6, 5)
    exec_true: int = 200
    exec_1mib: int = 20
    file_mib: int = 64
    file_repeats: int = 5
    host_true: int = 200
    host_copies: int = 10
    snapshots: int = 6
    pause_resume: int = 20
    idle_clones: int = 4
    idle_cold: int = 3
    idle_window_s: float = 5.0
    density_budget_mib: int = 2048
    density_cap: int = 16
    density_time_limit_s: float = 180.0
    create_delete_cycles: int = 20


FULL = Counts()
QUICK = replace(
    FULL, plain_boots=2, image_boots=2, cold_boots=2, template_creates=3, fork_sizes=(1, 2),
    fork_repeats=(2, 2), exec_true=10, exec_1mib=2, file_mib=4, file_repeats=2, host_true=10,
    host_copies=2, snapshots=2, pause_resume=2, idle_clones=2, idle_cold=1, idle_window_s=1.0,
    density_budget_mib=512, density_cap=3, density_time_limit_s=30.0, create_delete_cycles=2,
)

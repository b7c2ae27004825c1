"""kill -9 at random points of every operation, then one reconcile in a fresh process.

The short version of ``python -m bench.reliability`` (which runs 50 points and writes
``bench/RELIABILITY.md``): one harness, two kill points per operation with delays
drawn from a fixed seed, each checked for leftover rows, pending snapshots, orphan
QEMU processes (snapshot helpers included), temp dirs, reusable names and a working
next create (see ``bench/reliability.py`` for the checks).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from bench.reliability import OPERATIONS, TYPICAL_SECONDS, Harness, harness

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def kill_harness(default_image: object) -> Iterator[Harness]:
    with harness() as made:
        yield made


@pytest.mark.timeout(600)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_kill9_mid_operation_leaves_nothing_and_names_are_reusable(
        kill_harness: Harness, operation: str) -> None:
    rng = random.Random(f"kill9-{operation}")
    for _ in range(2):
        delay = rng.uniform(0, TYPICAL_SECONDS[operation])
        outcome = kill_harness.kill_point(operation, delay)
        assert outcome.problems == [], (operation, delay, outcome)


def test_reconcile_kills_a_dead_snapshot_writers_helper_qemu_and_frees_the_name(
        kill_harness: Harness) -> None:
    """Deterministic: kill the snapshot writer late enough that its helper QEMU runs
    (the worst case the random points may miss), then check as above."""
    outcome = kill_harness.kill_point("snapshot", TYPICAL_SECONDS["snapshot"] * 0.6)
    assert outcome.problems == [], outcome

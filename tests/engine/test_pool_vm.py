"""The warm pool: hand-out, refill, name clashes, and cleanup when its owner dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.engine.pool import POOL_LABEL, WarmPool
from smolbox.engine.reconcile import qemu_processes_under

pytestmark = pytest.mark.vm


def pooled_ids(engine: Engine) -> set[str]:
    return {r.id for r in engine.list_machines()
            if POOL_LABEL in r.config.get("labels", {})}


@pytest.fixture(scope="module")
def pooled_engine(engine: Engine) -> Iterator[Engine]:
    with Engine(warm_pool=2) as eng:
        assert eng.pool is not None
        assert eng.pool.wait_ready(2, timeout=120) == 2
        yield eng
    assert not pooled_ids(engine), "closing the engine must delete unused pool machines"


def test_create_hands_out_a_pooled_machine_with_its_own_identity(
        pooled_engine: Engine) -> None:
    before = pooled_ids(pooled_engine)
    record = pooled_engine.create(MachineConfig(name="from-pool", env={"ORIGIN": "pool"}))
    try:
        assert record.id in before, "create() did not take a machine from the pool"
        assert record.name == "from-pool"
        assert POOL_LABEL not in record.config["labels"]
        assert pooled_engine.exec(record.id, "hostname").stdout.strip() == "from-pool"
        assert pooled_engine.exec(record.id, "echo $ORIGIN").stdout == "pool\n"
        assert pooled_engine.pool is not None
        assert pooled_engine.pool.wait_ready(2, timeout=120) == 2, "the pool did not refill"
    finally:
        pooled_engine.delete(record.id, force=True)


def test_a_taken_name_is_refused_and_the_pool_machine_is_not_leaked(
        pooled_engine: Engine) -> None:
    assert pooled_engine.pool is not None
    pooled_engine.pool.wait_ready(2, timeout=120)
    holder = pooled_engine.create(MachineConfig(name="name-taken"))
    try:
        assert pooled_engine.pool.wait_ready(2, timeout=120) == 2
        with pytest.raises(errors.VMAlreadyExistsError):
            pooled_engine.create(MachineConfig(name="name-taken"))
        assert pooled_engine.pool.wait_ready(2, timeout=120) == 2
        assert len(pooled_ids(pooled_engine)) == 2, "a pool machine leaked"
    finally:
        pooled_engine.delete(holder.id, force=True)


def test_pool_only_serves_its_own_shape(engine: Engine) -> None:
    pool = WarmPool.__new__(WarmPool)  # no refill thread: only the matching rule is tested
    pool.engine = engine
    pool.config = MachineConfig(labels={POOL_LABEL: "1-1"})
    assert pool.matches(MachineConfig(name="x", env={"A": "b"}))
    assert not pool.matches(MachineConfig(memory_mib=512))
    assert not pool.matches(MachineConfig(from_template=False))
    assert not pool.matches(MachineConfig(network={"mode": "user"}))


def test_pool_machines_of_a_dead_owner_are_removed_by_reconcile(engine: Engine) -> None:
    others = pooled_ids(engine)  # pools of live owners (this process) must survive
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from smolbox.engine.engine import Engine
            engine = Engine(warm_pool=1)
            engine.pool.wait_ready(1, timeout=120)
            print("ready", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        orphans = pooled_ids(engine) - others
        assert len(orphans) == 1
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    report = engine.reconcile()
    assert set(report.pool_removed) == orphans
    assert pooled_ids(engine) == others
    assert not orphans & set(qemu_processes_under(engine.paths.run).values())

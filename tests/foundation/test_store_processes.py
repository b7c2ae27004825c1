"""One writer at a time across real processes (no fakes, no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.store import Store

from .conftest import machine

WORKER = Path(__file__).with_name("store_worker.py")


def _worker(db: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), str(db), *args], text=True,
                            **kw)  # type: ignore[call-overload]


def test_concurrent_read_modify_write_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "smolbox.db"
    with Store.open(db) as store:
        store.insert_machine(machine("counter", config={"n": 0}))
    procs = [_worker(db, "increment", "40", stderr=subprocess.PIPE) for _ in range(4)]
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in procs]
    assert results == [(0, "")] * 4
    with Store.open(db) as store:
        assert store.get_machine("counter").config == {"n": 160}


def test_second_writer_waits_and_readers_do_not(tmp_path: Path) -> None:
    db = tmp_path / "smolbox.db"
    store = Store.open(db, busy_timeout_s=0.05)
    store.insert_machine(machine("counter", config={"n": 0}))
    holder = _worker(db, "hold", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # WAL: reading works while another process holds the write lock…
        assert store.get_machine("counter").run_dir is None
        # …but writing does not: the busy store is a retryable catalogue error.
        with pytest.raises(errors.UnavailableError) as caught:
            store.update_machine("counter", pid=1)
        assert caught.value.retryable
        assert caught.value.details["sqlite_error"].startswith("SQLITE_BUSY")
        with pytest.raises(errors.UnavailableError):
            Store.open(db, busy_timeout_s=0.05)  # migrations take the lock too
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait() == 0
    assert store.update_machine("counter", pid=1).run_dir == "held"
    assert store.get_machine("counter").pid == 1
    store.close()

"""QEMU's own run state is the truth: a machine paused behind smolbox's back is shown
as such by ``info`` and continued by reconcile (a fresh engine, as after a crash)."""

from __future__ import annotations

import pytest

from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine

pytestmark = pytest.mark.vm


def test_accidental_pause_is_reported_and_reconcile_continues_it(engine: Engine) -> None:
    record = engine.create(MachineConfig(name="paused-behind-our-back"))
    try:
        vmm = engine.booter.require_vmm(record, "test")
        with vmm.qmp() as qmp:  # what a snapshot writer killed between stop and cont leaves
            qmp.command("stop")
        info = engine.info(record.id)
        assert info["state"] == "running" and info["vmm_status"] == "paused"
        assert [w["code"] for w in info["warnings"]].count("VMM_NOT_RUNNING") == 1
        with Engine.open() as fresh:
            assert record.id in fresh.startup_report.resumed
        assert engine.info(record.id)["vmm_status"] == "running"
        assert engine.exec(record.id, ["true"], timeout=60).success
    finally:
        engine.delete(record.id, force=True)


def test_resume_continues_a_running_machine_whose_qemu_stopped(engine: Engine) -> None:
    record = engine.create(MachineConfig(name="stopped-by-qemu"))
    try:
        with engine.booter.require_vmm(record, "test").qmp() as qmp:
            qmp.command("stop")
        assert engine.resume(record.id).state == "running"
        assert engine.info(record.id)["vmm_status"] == "running"
        assert engine.exec(record.id, ["true"], timeout=60).success
    finally:
        engine.delete(record.id, force=True)

"""Machine lifetime without a guest: validation, the store column, reaping at engine start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine import lifetime
from smolbox.engine.engine import Engine
from smolbox.paths import Paths
from smolbox.store import MachineRecord
from smolbox.store.states import MachineState


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    home = tmp_path / "home"
    return Paths(home=home, images=home / "images", cache=tmp_path / "cache", run=home / "run")


def _stopped(engine: Engine, vm_id: str, config: MachineConfig, expires_at: float | None
             ) -> None:
    engine.store.insert_machine(MachineRecord(
        id=vm_id, name=vm_id, config=config.model_dump(mode="json"), image_ref="default"))
    engine.store.transition(vm_id, MachineState.STOPPED)
    engine.store.update_machine(vm_id, expires_at=expires_at)


@pytest.mark.parametrize("bad", [0, -1, True, "10", 31 * 86400])
def test_timeouts_are_validated(bad: object) -> None:
    with pytest.raises(errors.ValidationError):
        lifetime.check_timeout(bad)


def test_config_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(errors.ValidationError):
        MachineConfig.model_validate({"timeout": 0})


def test_expiry_survives_restart_and_is_enforced_at_engine_start(paths: Paths) -> None:
    """The expiry lives in the store: a new engine (a restarted server, the next CLI
    call) deletes what expired meanwhile, pauses-on-timeout machines keep their row."""
    with Engine(paths) as first:
        _stopped(first, "sbx-expired", MachineConfig(timeout=5), time.time() - 1)
        _stopped(first, "sbx-later", MachineConfig(timeout=600), time.time() + 600)
        _stopped(first, "sbx-forever", MachineConfig(), None)
        _stopped(first, "sbx-pauses", MachineConfig(timeout=5, on_timeout="pause"),
                 time.time() - 1)
        first.set_timeout("sbx-forever", 900)
        assert first.info("sbx-forever")["expires_at"] > time.time() + 800
    with Engine.open(paths) as second:
        left = {r.id: r for r in second.list_machines()}
        assert "sbx-expired" not in left
        assert set(left) == {"sbx-later", "sbx-forever", "sbx-pauses"}
        assert left["sbx-pauses"].expires_at is None  # handled once, kept
        second.set_timeout("sbx-later", None)
        assert second.get("sbx-later").expires_at is None
        with pytest.raises(errors.VMNotFoundError):
            second.set_timeout("sbx-expired", 10)

"""Engine behaviour that needs no guest: start-up in any thread, invalid input."""

from __future__ import annotations

import asyncio
import logging

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine


def test_engine_starts_and_reconciles_inside_a_running_event_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    """The REST server builds its engine on the event loop thread: reconcile (pyroute2
    included) must still work there."""

    async def start() -> None:
        with Engine.open():
            pass

    with caplog.at_level(logging.WARNING, logger="smolbox.engine"):
        asyncio.run(start())
    assert "reconcile at engine start failed" not in caplog.text


def test_invalid_requests_fail_before_anything_is_created() -> None:
    with Engine() as engine:
        before = engine.list_machines()
        with pytest.raises(errors.VMNotFoundError):
            engine.exec("no-such-machine", "true")
        with pytest.raises(errors.ValidationError):
            engine.create(MachineConfig(memory_mib=1))
        with pytest.raises(errors.NotSupportedError):
            engine.create(MachineConfig(network={"mode": "user", "egress": "allow",
                                                 "allow": [{"cidr": "10.1.2.3/32"}]}))
        with pytest.raises(errors.ValidationError):
            engine.fork("anything", 0)
        assert engine.list_machines() == before

"""The SDK without a VM: one validation of a config, the async surface's threads.

A recording backend (``fake_backend.py``) shows what ``Machine`` / ``AsyncMachine``
hand down: the very ``MachineConfig`` object validated once, and nothing at all
when the input is invalid. ``LocalBackend``, the server route and ``RemoteBackend``
pass that object on (or serialise it once) without validating it again.
"""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import httpx
import pytest
from fake_backend import RecordingBackend, RecordingEngine, record_for

from smolbox import AsyncMachine, Machine, errors
from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine
from smolbox.sdk import LocalBackend, RemoteBackend
from smolbox.sdk import aio as sdk_aio
from smolbox.sdk.backend import Backend
from smolbox.sdk.models import MachineInfo
from smolbox.server import ServerSettings, ServerThread, create_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[MachineConfig]:
    """Every MachineConfig built by ``model_validate`` during the test, in order."""
    made: list[MachineConfig] = []
    original = MachineConfig.model_validate.__func__  # type: ignore[attr-defined]

    def spy(cls: type[MachineConfig], obj: Any, **kwargs: Any) -> MachineConfig:
        result: MachineConfig = original(cls, obj, **kwargs)
        made.append(result)
        return result

    monkeypatch.setattr(MachineConfig, "model_validate", classmethod(spy))
    return made


def as_backend(fake: RecordingBackend) -> Backend:
    return cast(Backend, fake)


def test_a_machine_config_reaches_the_backend_as_the_same_object(
        validations: list[MachineConfig]) -> None:
    fake = RecordingBackend()
    config = MachineConfig(name="given", memory_mib=512)
    machine = Machine.create(config, backend=as_backend(fake), start=False)
    assert fake.configs() == [config] and fake.configs()[0] is config
    assert validations == []  # already validated when made: not again
    assert fake.calls[0][2] == {"start": False}
    assert machine.name == "given"


def test_keyword_fields_are_validated_once_and_that_object_is_passed(
        validations: list[MachineConfig]) -> None:
    fake = RecordingBackend()
    Machine.create({"image": "default"}, backend=as_backend(fake), memory_mib=512,
                   env={"MODE": "test"})
    assert len(validations) == 1
    (sent,) = fake.configs()
    assert sent is validations[0]
    assert (sent.memory_mib, sent.env, sent.image) == (512, {"MODE": "test"}, "default")


def test_overrides_on_a_config_object_are_merged_and_validated_once(
        validations: list[MachineConfig]) -> None:
    fake = RecordingBackend()
    base = MachineConfig(name="base", vcpus=2)
    Machine.create(base, backend=as_backend(fake), memory_mib=1024)
    (sent,) = fake.configs()
    assert sent is validations[0] and len(validations) == 1
    assert (sent.name, sent.vcpus, sent.memory_mib) == ("base", 2, 1024)


@pytest.mark.parametrize("fields", [{"memory_mib": 1}, {"memroy_mib": 512},
                                    {"env": {"1BAD": "x"}}])
def test_invalid_input_fails_before_the_backend_is_called(fields: dict[str, Any]) -> None:
    fake = RecordingBackend()
    with pytest.raises(errors.ValidationError) as caught:
        Machine.create(backend=as_backend(fake), **fields)
    assert caught.value.details["field"].split(".")[0] == next(iter(fields))
    with pytest.raises(errors.ValidationError):
        Machine.create(fields, backend=as_backend(fake))
    assert fake.calls == []


@pytest.mark.anyio
async def test_async_create_validates_once_and_passes_the_object(
        validations: list[MachineConfig]) -> None:
    fake = RecordingBackend()
    config = MachineConfig(name="async-given")
    made = await AsyncMachine.create(config, backend=as_backend(fake))
    assert fake.configs()[0] is config and validations == []
    assert made.name == "async-given"
    await AsyncMachine.create(backend=as_backend(fake), vcpus=4)
    assert fake.configs()[1] is validations[0] and len(validations) == 1
    with pytest.raises(errors.ValidationError):
        await AsyncMachine.create(backend=as_backend(fake), vcpus=0)
    assert len(fake.configs()) == 2


def test_local_backend_passes_the_object_straight_to_the_engine(
        validations: list[MachineConfig]) -> None:
    engine = RecordingEngine()
    config = MachineConfig(name="local-given")
    info = LocalBackend(cast(Engine, engine)).create(config)
    assert engine.created == [config] and engine.created[0] is config
    assert validations == [] and info.name == "local-given"


def test_server_route_hands_its_validated_body_down() -> None:
    """SDK -> RemoteBackend -> real server on loopback -> LocalBackend -> engine."""
    engine = RecordingEngine()
    app = create_app(ServerSettings(token="t0ken"), engine=cast(Engine, engine))
    with ServerThread(app) as server:
        made = Machine.create(url=server.url, token="t0ken", name="served", memory_mib=512)
        made.close()
    (received,) = engine.created
    assert isinstance(received, MachineConfig)
    assert (received.name, received.memory_mib) == ("served", 512)
    assert made.name == "served"


def test_remote_backend_sends_the_non_default_fields_once() -> None:
    seen: list[httpx.Request] = []
    config = MachineConfig(name="remote-given", env={"A": "1"})

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        info = MachineInfo.from_record(record_for(config))
        return httpx.Response(201, json=info.model_dump(mode="json"))

    with RemoteBackend("http://smolbox.test", token="x",
                       transport=httpx.MockTransport(answer)) as remote:
        assert remote.create(config, start=False).name == "remote-given"
    (request,) = seen
    assert json.loads(request.content) == {"name": "remote-given", "env": {"A": "1"}}
    assert request.url.params["start"] == "false"


@pytest.mark.anyio
async def test_async_calls_run_on_the_sdks_own_limiter() -> None:
    limiter = sdk_aio.thread_limiter()
    assert limiter is sdk_aio.thread_limiter()  # one per event loop
    assert limiter.total_tokens == sdk_aio.THREAD_LIMIT
    default = anyio.to_thread.current_default_thread_limiter()
    assert limiter is not default
    fake = RecordingBackend(delay=0.05)
    machine = await AsyncMachine.connect("vm-1", backend=as_backend(fake))
    limiter.total_tokens = 2
    try:
        async with anyio.create_task_group() as tasks:
            for _ in range(6):
                tasks.start_soon(machine.refresh)
    finally:
        limiter.total_tokens = sdk_aio.THREAD_LIMIT
    assert fake.most_at_once == 2  # capped by the SDK limiter, not anyio's 40
    assert default.borrowed_tokens == 0

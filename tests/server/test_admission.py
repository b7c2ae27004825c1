"""Admission control at the front door: body limits, capacity caps, 5xx bodies.

A real server (uvicorn on loopback, its own engine and store); no VM is started:
every request here is refused before the engine would touch the host.
"""

from __future__ import annotations

import json

import httpx
import pytest

from smolbox import errors
from smolbox.server.errors import public_form


def test_a_200_mb_json_body_is_refused_at_once_with_413_and_no_echo(
        client: httpx.Client) -> None:
    blob = b'{"name": "' + b"x" * (200 << 20) + b'"}'
    response = client.post("/v1/machines", content=blob,
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert len(response.content) < 4096  # refused, not echoed back
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_chunked_body_over_the_limit_is_cut_off(client: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: counted as it streams
        yield b'{"name": "'
        for _ in range(20):
            yield b"y" * (1 << 20)
        yield b'"}'

    response = client.post("/v1/machines", content=chunks(),
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_memory_beyond_the_host_is_capacity_exhausted_not_500(client: httpx.Client) -> None:
    response = client.post("/v1/machines", json={"memory_mib": 65536, "name": "too-big"})
    if response.status_code == 201:  # a host with more than 64 GiB can hold it
        client.delete("/v1/machines/too-big")
        pytest.skip("this host has more than 64 GiB of memory")
    assert response.status_code == 503, response.text
    body = response.json()["error"]
    assert body["code"] == "CAPACITY_EXHAUSTED" and body["retryable"] is True
    assert "/" not in json.dumps(body["details"]).replace("</", "")
    assert client.get("/v1/machines/too-big").status_code == 404  # nothing was made


def test_the_machine_cap_refuses_with_retry_after(client: httpx.Client,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLBOX_MAX_VCPUS", "1")
    response = client.post("/v1/machines", json={"vcpus": 2, "name": "over-cap"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["details"]["limit"] == "max_vcpus"


def test_5xx_bodies_never_carry_argv_or_host_paths() -> None:
    spawn = errors.SpawnError(
        "QEMU exited with status 1 while starting /usr/bin/qemu-system-x86_64",
        details={"argv": ["/usr/bin/qemu-system-x86_64", "-kernel", "/root/.cache/x"],
                 "stderr": "qemu: could not open /srv/home/disk.qcow2",
                 "request_id": "r1", "vm_id": "box"})
    shown = public_form(spawn)
    text = json.dumps(shown.to_dict())
    assert "/usr/bin" not in text and "/root" not in text and "/srv" not in text
    assert shown.code == "SPAWN_FAILED" and shown.details == {"request_id": "r1",
                                                               "vm_id": "box"}
    assert public_form(errors.VMNotFoundError("box")) .details == {"vm_id": "box"}

"""Config validation: every bad field is a smolbox ValidationError naming the field."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from smolbox import errors
from smolbox.config import MachineConfig, Mount, NetworkPolicy, PortForward

BAD: list[tuple[dict[str, Any], str]] = [
    ({"name": "Bad_Name"}, "name"),
    ({"name": "-starts-with-dash"}, "name"),
    ({"name": "x" * 64}, "name"),
    ({"vcpus": 0}, "vcpus"),
    ({"vcpus": 33}, "vcpus"),
    ({"vcpus": "many"}, "vcpus"),
    ({"memory_mib": 127}, "memory_mib"),
    ({"memory_mib": 65537}, "memory_mib"),
    ({"disk_size_mib": 10}, "disk_size_mib"),
    ({"image": "Bad Image"}, "image"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"OK": "nul\0byte"}}, "env"),
    ({"labels": {"Bad Key": "v"}}, "labels"),
    ({"labels": {"k": "v" * 257}}, "labels"),
    ({"mounts": [{"host_path": "/x", "guest_path": "relative"}]}, "mounts.0.guest_path"),
    ({"mounts": [{"host_path": "", "guest_path": "/mnt"}]}, "mounts.0.host_path"),
    ({"ports": [{"host": 0, "guest": 80}]}, "ports.0.host"),
    ({"ports": [{"host": 80, "guest": 70000}]}, "ports.0.guest"),
    ({"ports": [{"host": 80, "guest": 80, "host_address": "nowhere"}]}, "ports.0.host_address"),
    ({"network": {"mode": "wifi"}}, "network.mode"),
    ({"network": {"egress": "allow", "allow": [{"cidr": "not-a-cidr"}]}},
     "network.allow.0.cidr"),
    ({"network": {"egress": "allow", "allow": [{"cidr": "10.0.0.0/8", "ports": [0]}]}},
     "network.allow.0.ports"),
    ({"timeouts": {"boot": 0}}, "timeouts.boot"),
    ({"timeouts": {"stop": 601}}, "timeouts.stop"),
    ({"memroy_mib": 512}, "memroy_mib"),
    ({"network": {"mode": "user", "bogus": 1}}, "network.bogus"),
]


@pytest.mark.parametrize(("data", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_field_is_named(data: dict[str, Any], field: str) -> None:
    for build in (lambda: MachineConfig(**data), lambda: MachineConfig.model_validate(data)):
        with pytest.raises(errors.ValidationError) as caught:
            build()
        err = caught.value
        assert not isinstance(err, pydantic.ValidationError)
        assert err.field == field  # type: ignore[attr-defined]
        assert err.code == "VALIDATION_ERROR" and err.http_status == 422
        assert field in err.message and err.help
        assert err.details["errors"][0]["field"] == field


def test_model_level_rules_name_their_model() -> None:
    with pytest.raises(errors.ValidationError) as caught:
        MachineConfig(ports=[{"host": 80, "guest": 1}, {"host": 80, "guest": 2}])
    assert "forwarded twice" in caught.value.message
    with pytest.raises(errors.ValidationError) as net:
        MachineConfig(network={"egress": "off", "allow": [{"cidr": "10.0.0.0/8"}]})
    assert net.value.field == "network"  # type: ignore[attr-defined]


def test_json_input_and_nested_models_raise_catalogue_errors() -> None:
    with pytest.raises(errors.ValidationError) as caught:
        MachineConfig.model_validate_json('{"vcpus": 99}')
    assert caught.value.field == "vcpus"  # type: ignore[attr-defined]
    with pytest.raises(errors.ValidationError):
        MachineConfig.model_validate_json("{not json")
    for build in (lambda: Mount(host_path="/x", guest_path="x"),
                  lambda: PortForward(host=1, guest=0),
                  lambda: NetworkPolicy(mode="tap", egress="sometimes")):
        with pytest.raises(errors.ValidationError):
            build()


def test_valid_config_and_defaults() -> None:
    cfg = MachineConfig(name="box-1", vcpus=2, memory_mib=512, env={"PATH_X": "1"},
                        labels={"team": "a"}, ports=[{"host": 8080, "guest": 80}],
                        network={"mode": "user", "egress": "allow",
                                 "allow": [{"cidr": "10.1.2.3/8", "ports": [443]}]})
    assert cfg.network.allow[0].cidr == "10.0.0.0/8"
    assert MachineConfig().network.mode == "none"
    assert MachineConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(errors.ValidationError):
        MachineConfig(vcpus=40)

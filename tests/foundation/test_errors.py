"""The error catalogue: every class is complete and survives a trip over the wire."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from smolbox import errors

SAMPLES: dict[str, Any] = {
    "vm_id": "vm-1", "from_state": "running", "to_state": "paused", "snapshot_id": "snap-1",
    "reason": "agent gone", "operation": "boot", "timeout_seconds": 1.5, "command": "ls -l",
    "exit_code": 2, "stdout": "out", "stderr": "err", "tool": "qemu-img", "package": "qemu-utils",
    "pid": 4242, "start_time": 99, "port": 8080, "message": "something failed",
    "remediation": "restart it", "url": "http://127.0.0.1:1", "retry_after": 3.0,
    "status_code": 400, "errno": 2, "free_bytes": 1024,
}
CATALOGUE = sorted(errors.catalogue().items())


def build(cls: type[errors.SmolboxError]) -> errors.SmolboxError:
    """An instance with a sample value for each of the class's detail attributes."""
    return cls(**{name: SAMPLES.get(name, f"sample-{name}") for name in cls.detail_attrs})


def test_codes_unique_and_well_formed() -> None:
    codes = [cls.code for _, cls in CATALOGUE]
    assert len(codes) == len(set(codes))
    for code, cls in CATALOGUE:
        assert code == cls.code
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", code)


def test_every_error_class_in_the_module_is_in_the_catalogue() -> None:
    classes = {obj for obj in vars(errors).values()
               if inspect.isclass(obj) and issubclass(obj, errors.SmolboxError)}
    assert classes == set(errors.catalogue().values()) | {errors.SmolboxError}


@pytest.mark.parametrize(("code", "cls"), CATALOGUE, ids=[c for c, _ in CATALOGUE])
def test_class_is_complete(code: str, cls: type[errors.SmolboxError]) -> None:
    err = build(cls)
    assert err.code == code
    assert err.help and err.help.strip()
    assert 400 <= err.http_status <= 599
    assert isinstance(err.retryable, bool)
    assert isinstance(err.details, dict)
    assert str(err) == f"[{code}] {err.message}"
    assert err.to_dict()["error"]["code"] == code


@pytest.mark.parametrize(("code", "cls"), CATALOGUE, ids=[c for c, _ in CATALOGUE])
def test_round_trip_through_from_wire(code: str, cls: type[errors.SmolboxError]) -> None:
    err = build(cls)
    from_text = errors.from_wire(str(err))
    assert type(from_text) is cls and from_text.message == err.message
    from_body = errors.from_wire(err.to_dict())
    assert type(from_body) is cls
    assert (from_body.message, from_body.help) == (err.message, err.help)
    assert from_body.details == err.details
    for attr in cls.detail_attrs:
        assert getattr(from_body, attr) == getattr(err, attr), attr
    assert type(errors.from_wire(json.dumps(err.to_dict()).encode())) is cls


def test_unknown_and_garbage_wire_input() -> None:
    unknown = errors.from_wire("[FROM_THE_FUTURE] new thing")
    assert unknown.code == "FROM_THE_FUTURE" and isinstance(unknown, errors.SmolboxError)
    assert isinstance(errors.from_wire("not an error"), errors.InternalError)
    assert isinstance(errors.from_wire({"nope": 1}), errors.InternalError)
    assert errors.error_for_status(404) is errors.NotFoundError
    assert errors.error_for_status(418) is errors.BadRequestError


ISSUE_NAMES = [
    "SmolVMError", "VMAlreadyExistsError", "VMNotFoundError", "ValidationError", "NetworkError",
    "HostError", "ImageError", "VMMAPIError", "OperationTimeoutError", "TimeoutError",
    "CommandExecutionUnavailableError", "ExecutionError", "NotSupportedError",
    "InvalidConfigError", "ConnectionError", "NotFoundError", "ConflictError", "BadRequestError",
    "InternalError", "InvalidTransitionError", "SnapshotAlreadyExistsError",
    "SnapshotNotFoundError", "StatePoisonedError", "FirewallError", "NetworkConfigError",
    "NetworkSetupError", "JailerError", "MetricsError", "ShutdownError", "RootfsError",
    "GuestMetadataError", "VMFileNotFoundError", "VMFileParseError", "VMFileValidationError",
    "ProvisioningError", "KVMUnavailable", "BackendNotAvailable", "IPPoolExhaustedError",
]


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_issue_names_import(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.SmolboxError)
    assert name in errors.__all__


def test_named_attributes() -> None:
    base = errors.SmolVMError("boom", details={"k": 1})
    assert (base.message, base.details) == ("boom", {"k": 1})
    api = errors.VMMAPIError("bad", status_code=400)
    assert api.status_code == 400  # type: ignore[attr-defined]
    t = errors.TimeoutError("boot", 2.0)
    assert isinstance(t, errors.OperationTimeoutError)
    assert (t.operation, t.timeout_seconds) == ("boot", 2.0)  # type: ignore[attr-defined]
    c = errors.CommandExecutionUnavailableError("vm", "no agent", "restart")
    assert (c.vm_id, c.reason, c.remediation) == ("vm", "no agent", "restart")  # type: ignore[attr-defined]
    assert c.help == "restart"
    e = errors.ExecutionError(["false"], 1, "o", "e")
    assert (e.command, e.exit_code, e.stdout, e.stderr) == (["false"], 1, "o", "e")  # type: ignore[attr-defined]
    i = errors.InvalidTransitionError("vm", "running", "deleted")
    assert (i.vm_id, i.from_state, i.to_state) == ("vm", "running", "deleted")  # type: ignore[attr-defined]
    assert isinstance(errors.VMNotFoundError("x"), errors.NotFoundError)
    assert isinstance(errors.VMAlreadyExistsError("x"), errors.ConflictError)


def test_acceptance_one_liner() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import smolbox.errors as e; e.VMNotFoundError('x')"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _assert_round_trips(err: errors.SmolboxError) -> None:
    """``to_dict()`` and ``str()`` both come back as the same class and message."""
    for wire in (err.to_dict(), str(err), json.dumps(err.to_dict())):
        back = errors.from_wire(wire)
        assert type(back) is type(err), wire
        assert back.message == err.message
    body = errors.from_wire(err.to_dict())
    assert (body.details, body.help) == (err.details, err.help)


@pytest.mark.parametrize("status", range(400, 600))
def test_every_status_builds_from_a_message_and_round_trips(status: int) -> None:
    err = errors.error_for_status(status)("msg")
    assert err.message == "msg" and str(err) == f"[{err.code}] msg"
    assert err.http_status // 100 == status // 100
    if status >= 500:
        assert isinstance(err, errors.InternalError | errors.UnavailableError
                          | errors.NotSupportedError)
    _assert_round_trips(err)


def test_known_statuses_map_to_their_family() -> None:
    assert errors.error_for_status(408) is errors.RequestTimeoutError
    assert issubclass(errors.RequestTimeoutError, errors.OperationTimeoutError)
    assert errors.error_for_status(429) is errors.RateLimitedError
    assert errors.error_for_status(499) is errors.BadRequestError
    assert errors.error_for_status(599) is errors.InternalError
    for status in (502, 503, 504):
        assert errors.error_for_status(status)("x").retryable


@pytest.mark.parametrize(("code", "cls"), CATALOGUE, ids=[c for c, _ in CATALOGUE])
def test_every_class_builds_from_its_message_alone(code: str,
                                                    cls: type[errors.SmolboxError]) -> None:
    err = cls(message="msg")
    assert err.message == "msg" and err.code == code
    assert all(getattr(err, name) is None for name in cls.detail_attrs)
    _assert_round_trips(err)
    bare = cls()  # no message at all: the template (with '?') or the docstring
    assert bare.message and "{" not in bare.message
    _assert_round_trips(bare)


def test_constructor_maps_positional_and_keyword_attributes() -> None:
    t = errors.OperationTimeoutError("boot", 2.5, help="wait longer", details={"k": 1})
    assert t.message == "boot did not finish within 2.5 s" and t.help == "wait longer"
    assert t.details == {"k": 1, "operation": "boot", "timeout_seconds": 2.5}
    v = errors.ValidationError("vcpus too big", field="vcpus", value=99)
    assert (v.message, v.field, v.value) == ("vcpus too big", "vcpus", 99)  # type: ignore[attr-defined]
    assert errors.VMNotFoundError().message == "Machine '?' not found"
    assert errors.InvalidTransitionError("vm", to_state="paused").message == (
        "Machine 'vm' cannot go from ? to paused")
    assert errors.HostToolMissingError("nft").message == "Required host tool 'nft' not found"
    assert errors.HostToolMissingError("nft", package="nftables").message == (
        "Required host tool 'nft' not found (Debian package nftables)")
    assert errors.ExecutionError(["false", "-x"], 1).message == "Command `false -x` exited with 1"
    cap = errors.CapacityExhaustedError("full", details={"retry_after": 5, "limit": "max_vcpus"})
    assert (cap.retry_after, cap.limit) == (5, "max_vcpus")  # type: ignore[attr-defined]
    assert errors.RateLimitedError(retry_after=2.0).retry_after == 2.0  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        errors.VMNotFoundError("a", "msg", "extra")
    with pytest.raises(TypeError):
        errors.VMNotFoundError("a", vm_id="b")
    with pytest.raises(TypeError):
        errors.ValidationError("m", nonsense=1)


def test_errors_pickle_as_their_wire_form() -> None:
    import pickle

    err = errors.InvalidTransitionError("vm", "running", "paused", details={"k": 1})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.InvalidTransitionError
    assert (back.message, back.details, back.to_state) == (  # type: ignore[attr-defined]
        err.message, err.details, "paused")


def test_node_lost_is_retryable_and_unavailable() -> None:
    err = errors.NodeLostError(node="n1")
    assert isinstance(err, errors.UnavailableError) and err.retryable
    assert (err.code, err.http_status) == ("NODE_LOST", 503)

"""The guest is hostile: broken frames give GuestAgentError subclasses, never hangs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smolbox.channel import AgentClient
from smolbox.errors import (
    CommandExecutionUnavailableError,
    GuestAgentError,
    GuestProtocolError,
    OperationTimeoutError,
)
from smolbox.guest import protocol as p

from .hostile import GuestSide, HostileGuest, jframe, raw_frame


def _connect(guest: HostileGuest, script: Callable[[GuestSide], None],
             timeout: float = 5.0) -> AgentClient:
    guest.scripts.put(script)
    return AgentClient.connect(guest.socket, vm_id="hostile", timeout=timeout)


def _exec_script(*frames: bytes) -> Callable[[GuestSide], None]:
    """Handshake, wait for the exec request, answer with ``frames``, keep the line open."""
    def script(side: GuestSide) -> None:
        side.hello()
        side.read_frame()
        for frame in frames:
            side.send(frame)
        side.hold()
    return script


CASES = {
    "oversized": raw_frame(p.STDOUT, 1, b"", length=p.MAX_FRAME + 1),
    "unknown type": raw_frame(200, 1, b"x"),
    "unknown stream": raw_frame(p.STDOUT, 77, b"x"),
    "bad json": raw_frame(p.EXIT, 1, b"{not json"),
    "json not an object": jframe(p.EXIT, 1, [1, 2]),
    "exit without status": jframe(p.EXIT, 1, {"code": None, "signal": None}),
    "exit code not int": jframe(p.EXIT, 1, {"code": "0"}),
    "wrong version": raw_frame(p.STDOUT, 1, b"x", version=9),
    "bad magic": b"XX" + raw_frame(p.STDOUT, 1, b"x")[2:],
    "host-only type": jframe(p.REQUEST, 1, {"op": "exec"}),
    "data on exec stream": raw_frame(p.DATA, 1, b"x"),
    "short credit": raw_frame(p.CREDIT_FRAME, 1, b"\x00"),
    "second reply": jframe(p.REPLY, 1, {"pid": 1}) + jframe(p.REPLY, 1, {"pid": 1}),
    "error without message": jframe(p.ERROR, 1, {"errno": 2}),
    "stream zero error": jframe(p.ERROR, 0, {"message": "nope"}),
    "stream zero data": raw_frame(p.STDOUT, 0, b"x"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_frame_fails_the_operation_and_the_connection(hostile: HostileGuest,
                                                                case: str) -> None:
    client = _connect(hostile, _exec_script(CASES[case]))
    with pytest.raises(GuestProtocolError) as info:
        client.exec("true")
    assert info.value.code == "GUEST_PROTOCOL_ERROR" and info.value.vm_id == "hostile"
    with pytest.raises(GuestProtocolError):  # the connection stays poisoned
        client.ping()
    client.close()


def test_second_exit_poisons_the_connection(hostile: HostileGuest) -> None:
    exit0 = jframe(p.EXIT, 1, {"code": 0})
    client = _connect(hostile, _exec_script(jframe(p.REPLY, 1, {"pid": 3}), exit0, exit0))
    assert client.exec("true").exit_code == 0
    with pytest.raises(GuestProtocolError):
        for _ in range(1000):  # the duplicate is detected by the reader asynchronously
            client.ping()
    client.close()


def test_guest_closing_mid_exec_is_connection_lost(hostile: HostileGuest) -> None:
    def script(side: GuestSide) -> None:
        side.hello()
        side.read_frame()
        side.send(jframe(p.REPLY, 1, {"pid": 3}) + raw_frame(p.STDOUT, 1, b"partial"))
    client = _connect(hostile, script)
    with pytest.raises(CommandExecutionUnavailableError) as info:
        client.exec("true")
    assert info.value.reason == "agent connection lost"
    client.close()


def test_handshake_with_wrong_version_is_rejected(hostile: HostileGuest) -> None:
    with pytest.raises(GuestProtocolError):
        _connect(hostile, lambda side: side.hello(version=2))
    with pytest.raises(GuestProtocolError):
        _connect(hostile, lambda side: side.send(jframe(p.HELLO, 0, {
            "version": 7, "nonce": side.nonce})))
    with pytest.raises(GuestProtocolError):
        _connect(hostile, lambda side: side.hello(error="too old"))


def test_garbage_instead_of_handshake(hostile: HostileGuest) -> None:
    def flood(side: GuestSide) -> None:
        chunk = b"\x00garbage" * 8192
        for _ in range(80):
            side.send(chunk)
        side.hold()
    with pytest.raises(GuestProtocolError):
        _connect(hostile, flood)
    # a little garbage and a hang-up: the guest answered, but not with a handshake
    with pytest.raises(GuestProtocolError):
        _connect(hostile, lambda side: side.send(b"junk"), timeout=0.5)
    # silence is not garbage: nothing ever answered, which is a (retryable) timeout
    with pytest.raises(OperationTimeoutError):
        _connect(hostile, lambda side: side.hold(), timeout=0.5)


def test_stale_frames_before_the_hello_are_skipped(hostile: HostileGuest) -> None:
    """A reconnect may see the tail of the previous session before the new HELLO."""
    def script(side: GuestSide) -> None:
        side.send(raw_frame(p.STDOUT, 5, b"stale") + b"S" + jframe(p.HELLO, 0, {
            "version": 1, "nonce": "old"}))
        side.hello()
        side.read_frame()
        side.send(jframe(p.REPLY, 1, {"pid": 9}) + raw_frame(p.STDOUT, 1, b"hi")
                  + jframe(p.EXIT, 1, {"code": 0}))
        side.hold()
    with _connect(hostile, script) as client:
        assert client.exec("x").stdout == "hi"


def test_silent_first_connection_is_retried(hostile: HostileGuest) -> None:
    """A HELLO swallowed by a stale session is retried on a fresh connection."""
    hostile.scripts.put(lambda side: side.hold())

    def answer(side: GuestSide) -> None:
        side.hello()
        side.read_frame()
        side.send(jframe(p.REPLY, 1, {"t": 1}))
        side.hold()

    with _connect(hostile, answer, timeout=20) as client:
        assert client.ping() > 0


# ------------------------------------------------------------------------- fuzzing

_JSON_BODIES = st.sampled_from([
    {"pid": 5}, {"pid": -1}, {"pid": "x"}, {"code": 0}, {"code": 1 << 40}, {"signal": 9},
    {"code": True}, {"message": "m", "errno": 2, "path": "/x"}, {"message": 3},
    {"entries": [{"name": 1}]}, {"entries": "no"}, {"type": "file"}, {}, [], None, "str",
    {"version": 1, "nonce": "n"},
])
_FRAME = st.one_of(
    st.builds(lambda t, s, body, fl: raw_frame(t, s, json.dumps(body).encode(), flags=fl),
              st.sampled_from(sorted(p.KNOWN_TYPES)), st.sampled_from([0, 1, 2, 3, 99]),
              _JSON_BODIES, st.sampled_from([0, p.FLAG_EOF, 0xFFFF])),
    st.builds(lambda t, s, data, fl: raw_frame(t, s, data, flags=fl),
              st.integers(0, 255), st.sampled_from([0, 1, 2, 1 << 31]),
              st.binary(max_size=40), st.sampled_from([0, p.FLAG_EOF])),
    st.builds(lambda n: raw_frame(p.STDOUT, 1, b"", length=n),
              st.integers(p.MAX_FRAME - 2, 1 << 32 - 1)),
    st.binary(min_size=1, max_size=40),
)
_OPS: dict[str, Callable[[AgentClient], object]] = {
    "exec": lambda c: c.exec("true"),
    "stream": lambda c: list(c.exec_stream("true")),
    "read": lambda c: c.read_file("/etc/hostname"),
    "write": lambda c: c.write_file("/tmp/x", b"x" * 300_000),
    "stat": lambda c: c.stat("/etc"),
    "list": lambda c: c.list_dir("/etc"),
    "ping": lambda c: c.ping(),
    "spawn": lambda c: c.spawn("true").wait(),
}


@pytest.fixture(scope="module")
def fuzz_guest() -> Iterator[HostileGuest]:
    guest = HostileGuest()
    yield guest
    guest.close()
    assert not guest.errors


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_FRAME, max_size=6), op=st.sampled_from(sorted(_OPS)),
       after_request=st.booleans())
def test_fuzzed_guest_only_raises_guest_agent_errors(fuzz_guest: HostileGuest,
                                                     client: AgentClient, frames: list[bytes],
                                                     op: str, after_request: bool) -> None:
    def script(side: GuestSide) -> None:
        side.hello()
        if after_request:
            side.read_frame()
        for frame in frames:
            side.send(frame)
        # then hang up, so every operation must end

    hostile_client = _connect(fuzz_guest, script)
    hostile_client.op_timeout = 5.0
    done = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            _OPS[op](hostile_client)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    # meanwhile a client of a well-behaved agent keeps working
    assert client.exec(["echo", "ok"]).stdout == "ok\n"
    worker.join(timeout=30)
    assert done.is_set(), "the hostile guest made an operation hang"
    hostile_client.close()
    for exc in outcome:
        assert isinstance(exc, GuestAgentError), repr(exc)
    assert not any(t.name == "agent-reader-hostile" and t.is_alive()
                   for t in threading.enumerate()) or _reader_ends()


def _reader_ends() -> bool:
    for t in threading.enumerate():
        if t.name == "agent-reader-hostile":
            t.join(timeout=5)
            if t.is_alive():
                return False
    return True

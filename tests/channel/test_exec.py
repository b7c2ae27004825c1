"""exec, exec_stream, spawn and attach against the real agent process."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from smolbox.channel import AgentClient, ExecResult
from smolbox.errors import (
    CommandExecutionUnavailableError,
    ExecutionError,
    GuestAgentError,
    GuestFileNotFoundError,
    OperationTimeoutError,
    ValidationError,
)

from .conftest import AgentProcess


def _dead(pid: int, wait: float = 10.0) -> bool:
    """True once ``pid`` has ended: gone from /proc, or a zombie nobody reaped yet
    (SIGKILL is asynchronous and PID 1 of these machines reaps lazily)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _pids(path: Path, count: int) -> list[int]:
    """The pids a command wrote to ``path`` (one a line), once all ``count`` are there."""
    deadline = time.monotonic() + 30
    while True:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return [int(pid) for pid in lines]
        assert time.monotonic() < deadline, f"the command never wrote its pids to {path}"
        time.sleep(0.05)


def test_exec_outputs_and_exit_codes(client: AgentClient) -> None:
    res = client.exec(["sh", "-c", "echo out; echo err >&2"])
    assert (res.exit_code, res.signal, res.stdout, res.stderr) == (0, None, "out\n", "err\n")
    assert res.success and res.duration > 0 and res.pid > 0
    assert client.exec("exit 1").exit_code == 1
    assert client.exec("definitely-not-a-command-xyz").exit_code == 127
    missing = client.exec(["/no/such/binary"])
    assert missing.exit_code == 127 and "not found" in missing.stderr


def test_assert_success_raises_execution_error(client: AgentClient) -> None:
    res = client.exec("echo boom >&2; exit 3")
    with pytest.raises(ExecutionError) as info:
        res.assert_success()
    assert info.value.exit_code == 3 and "boom" in info.value.stderr
    assert client.exec("true").assert_success().success


def test_signal_killed_process(client: AgentClient) -> None:
    res = client.exec(["sh", "-c", "kill -9 $$"])
    assert res.exit_code is None and res.signal == signal.SIGKILL and not res.success


def test_twenty_concurrent_execs(client: AgentClient) -> None:
    results: dict[int, ExecResult] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = client.exec(["sh", "-c", f"echo {i}; echo e{i} >&2"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {i: (r.stdout, r.stderr) for i, r in results.items()} == {
        i: (f"{i}\n", f"e{i}\n") for i in range(20)}


def test_one_mib_stdout_intact(client: AgentClient) -> None:
    res = client.exec(["python3", "-c",
                       "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"])
    assert res.stdout_bytes == bytes(range(256)) * 4096


def test_binary_stdout_byte_exact(client: AgentClient) -> None:
    res = client.exec(["printf", "\\000\\377\\200abc\\n"])
    assert res.stdout_bytes == b"\x00\xff\x80abc\n"
    assert res.stdout == "\x00\ufffd\ufffdabc\n"


def test_timeout_kills_process_group_and_machine_stays_usable(client: AgentClient,
                                                             tmp_path: Path) -> None:
    """The shell, its backgrounded child and its foreground child all end on timeout:
    a kill of the shell alone would leave both sleeps running."""
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pids}; echo $$ >> {pids}; sleep 100"
    with pytest.raises(OperationTimeoutError) as info:
        client.exec(["sh", "-c", script], timeout=1)
    assert info.value.operation == "exec" and info.value.timeout_seconds == 1
    assert client.exec("echo alive").stdout == "alive\n"
    background, shell = _pids(pids, 2)
    assert _dead(shell), "the timed-out shell survived"
    assert _dead(background), "the backgrounded sleep survived: not a process-group kill"


def test_stdin_small_and_larger_than_the_credit_window(client: AgentClient) -> None:
    assert client.exec("cat", stdin=b"hello\n").stdout == "hello\n"
    big = os.urandom(20 << 20)
    res = client.exec(["sh", "-c", "cat | sha256sum"], stdin=big)
    import hashlib
    assert res.stdout.split()[0] == hashlib.sha256(big).hexdigest()
    # a process that ignores its stdin does not block the exec
    assert client.exec("true", stdin=big).exit_code == 0


def test_env_cwd_and_env_defaults(client: AgentClient, tmp_path: Path) -> None:
    res = client.exec("echo $FOO; pwd", env={"FOO": "bar baz"}, cwd=str(tmp_path))
    assert res.stdout == f"bar baz\n{tmp_path}\n"
    client.set_env({"SBX_DEFAULT": "one", "FOO": "default"})
    assert client.exec("echo $SBX_DEFAULT $FOO").stdout == "one default\n"
    assert client.exec("echo $FOO", env={"FOO": "override"}).stdout == "override\n"
    with pytest.raises(GuestFileNotFoundError):
        client.exec("true", cwd="/no/such/dir")


def test_user_by_name_and_uid(client: AgentClient) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    assert client.exec(["id", "-u"], user="nobody").stdout.strip() == "65534"
    res = client.exec(["sh", "-c", "id -u; echo $HOME"], user="65534")
    assert res.stdout.split("\n")[0] == "65534"
    with pytest.raises(GuestAgentError) as info:
        client.exec("true", user="no-such-user-xyz")
    assert "no such user" in info.value.message


def test_invalid_requests_fail_before_sending(client: AgentClient) -> None:
    for bad, field in ((lambda: client.exec([]), "cmd"), (lambda: client.exec("  "), "cmd"),
                       (lambda: client.exec("true", cwd="rel"), "cwd"),
                       (lambda: client.exec("true", env={"1BAD": "x"}), "env"),
                       (lambda: client.exec("true", timeout=0), "timeout")):
        with pytest.raises(ValidationError) as info:
            bad()
        assert info.value.field == field


def test_exec_stream_events_in_order(client: AgentClient) -> None:
    events = list(client.exec_stream("echo a; echo b >&2; echo c; exit 4"))
    assert events[-1].kind == "exit" and events[-1].exit_code == 4
    out = b"".join(e.data for e in events if e.kind == "stdout")
    err = b"".join(e.data for e in events if e.kind == "stderr")
    assert (out, err) == (b"a\nc\n", b"b\n")


def test_exec_stream_early_stop_kills_the_command(client: AgentClient, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    stream = client.exec_stream(["sh", "-c", f"sleep 100 & echo $! > {pids}; "
                                 f"echo $$ >> {pids}; echo first; exec sleep 100"])
    first = next(stream)
    assert first.kind == "stdout" and first.data == b"first\n"
    stream.close()
    assert client.exec("echo ok").stdout == "ok\n"
    background, command = _pids(pids, 2)  # ``exec``: the shell's pid is now the sleep's
    assert _dead(command), "closing the stream did not kill the command"
    assert _dead(background), "closing the stream left the command's group running"


def test_spawn_kill_and_stdin(client: AgentClient) -> None:
    handle = client.spawn(["sleep", "100"])
    assert handle.pid > 0 and not handle.done
    with pytest.raises(OperationTimeoutError):
        handle.wait(timeout=0.1)
    handle.kill()
    res = handle.wait()
    assert res.signal == signal.SIGKILL
    cat = client.spawn("cat")
    cat.send_stdin(b"line one\n")
    cat.send_stdin(b"line two\n")
    cat.close_stdin()
    assert cat.wait().stdout == "line one\nline two\n"
    events = list(client.spawn("echo x", stdin=b"").events())
    assert events[-1].kind == "exit" and events[0].data == b"x\n"


def test_background_process_survives_reconnect(private_agent: AgentProcess) -> None:
    first = private_agent.connect()
    proc = first.spawn("read x; sleep 0.2; echo got-$x; read y; echo got-$y")
    proc.send_stdin(b"one\n")
    pid = proc.pid
    first.close()  # output written while nobody listens is kept for the next attach
    with private_agent.connect() as second:
        assert pid in second.background_pids()
        again = second.attach(pid)
        again.send_stdin(b"two\n")
        again.close_stdin()
        res = again.wait()
        assert (res.exit_code, res.stdout) == (0, "got-one\ngot-two\n")
        with pytest.raises(GuestAgentError):
            second.attach(pid)  # it has exited and was collected


def test_closed_client_raises_and_reconnect_works(private_agent: AgentProcess) -> None:
    c = private_agent.connect()
    assert c.exec("echo 1").stdout == "1\n"
    c.close()
    c.close()  # idempotent
    with pytest.raises(CommandExecutionUnavailableError):
        c.exec("true")
    with private_agent.connect() as again:
        assert again.exec("echo 2").stdout == "2\n"
        assert again.ping() > 0


def test_agent_killed_mid_exec_gives_typed_error(private_agent: AgentProcess,
                                                tmp_path: Path) -> None:
    c = private_agent.connect()
    outcome: list[BaseException] = []
    pids = tmp_path / "pids"

    def run() -> None:
        try:
            c.exec(["sh", "-c", f"echo $$ > {pids}; exec sleep 100"])
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    (command,) = _pids(pids, 1)  # the command really runs: kill the agent under it
    private_agent.proc.kill()
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], CommandExecutionUnavailableError)
    assert outcome[0].reason == "agent connection lost"
    with pytest.raises(CommandExecutionUnavailableError):
        c.exec("true")
    c.close()
    # On the host nothing dies with the agent (in a VM the machine would): end the
    # orphaned command's group ourselves.
    os.killpg(command, signal.SIGKILL)
    assert _dead(command)

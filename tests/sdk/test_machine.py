"""The Machine API, run unchanged against LocalBackend and RemoteBackend (real server).

Every test takes the parametrized ``backend`` fixture, so each one passes on the
embedded engine and over HTTP; errors must be the same catalogue classes on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import AsyncMachine, ExecResult, Machine, errors
from smolbox.sdk import AsyncSnapshot
from smolbox.sdk.backend import Backend

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def machine(backend: Backend) -> Iterator[Machine]:
    m = Machine.create(backend=backend, name=f"sdk-{backend.name}", env={"GREETING": "hi"})
    yield m
    m.delete(force=True)


def test_create_info_list_connect(backend: Backend, machine: Machine) -> None:
    info = machine.info()
    assert info.state == "running"
    assert info.name == f"sdk-{backend.name}"
    assert info.config["env"] == {"GREETING": "hi"}
    assert machine.id in {i.id for i in Machine.list(backend=backend)}
    assert Machine.connect(machine.name, backend=backend).id == machine.id
    assert machine.id in {i.id for i in Machine.list(backend=backend, states={"running"})}
    assert machine.id not in {i.id for i in Machine.list(backend=backend, states={"stopped"})}


def test_exec_output_exit_code_env_cwd_stdin(machine: Machine) -> None:
    result = machine.exec("echo $GREETING; echo oops >&2; exit 3")
    assert isinstance(result, ExecResult)
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 3)
    with pytest.raises(errors.ExecutionError) as caught:
        result.assert_success()
    assert caught.value.details["exit_code"] == 3
    assert machine.exec(["pwd"], cwd="/tmp").stdout == "/tmp\n"
    assert machine.exec("echo $X", env={"X": "42"}).stdout == "42\n"
    assert machine.exec(["cat"], stdin=b"piped\x00in").stdout_bytes == b"piped\x00in"
    binary = machine.exec(["printf", "\\000\\377\\001"]).stdout_bytes
    assert binary == b"\x00\xff\x01"


def test_exec_timeout_kills_and_machine_stays_usable(machine: Machine) -> None:
    with pytest.raises(errors.OperationTimeoutError) as caught:
        machine.exec("sleep 30", timeout=1)
    assert caught.value.code == "OPERATION_TIMEOUT"
    assert machine.exec("echo alive").stdout == "alive\n"


def test_exec_stream_yields_output_then_exit(machine: Machine) -> None:
    events = list(machine.exec_stream("for i in 1 2 3; do echo $i; done; echo e >&2; exit 4"))
    assert events[-1].kind == "exit" and events[-1].exit_code == 4
    out = b"".join(e.data for e in events if e.kind == "stdout")
    err = b"".join(e.data for e in events if e.kind == "stderr")
    assert (out, err) == (b"1\n2\n3\n", b"e\n")


def test_exec_on_missing_machine_is_vm_not_found(backend: Backend) -> None:
    with pytest.raises(errors.VMNotFoundError) as caught:
        Machine.connect("no-such-machine", backend=backend)
    assert caught.value.details["vm_id"] == "no-such-machine"
    assert caught.value.help
    with pytest.raises(errors.NotFoundError):
        backend.exec("no-such-machine", "true")


def test_invalid_command_is_a_validation_error(machine: Machine) -> None:
    with pytest.raises(errors.ValidationError):
        machine.exec("   ")


def test_files_roundtrip(machine: Machine, tmp_path: Path) -> None:
    files = machine.files
    files.mkdir("/srv/data/deep")
    files.write("/srv/data/hello.txt", "hello\n")
    files.write("/srv/data/raw.bin", b"\x00\x01\x02", mode=0o600)
    assert files.read_text("/srv/data/hello.txt") == "hello\n"
    assert files.read("/srv/data/raw.bin") == b"\x00\x01\x02"
    stat = files.stat("/srv/data/raw.bin")
    assert (stat.type, stat.size, stat.mode & 0o777) == ("file", 3, 0o600)
    assert {e.name for e in files.list("/srv/data")} == {"deep", "hello.txt", "raw.bin"}
    assert files.exists("/srv/data/hello.txt")

    blob = os.urandom(3 * 1024 * 1024 + 7)
    local = tmp_path / "blob.bin"
    local.write_bytes(blob)
    files.upload(local, "/srv/data/blob.bin")
    assert machine.exec("sha256sum /srv/data/blob.bin").stdout.split()[0] == \
        __import__("hashlib").sha256(blob).hexdigest()
    back = files.download("/srv/data/blob.bin", tmp_path / "back.bin")
    assert back.read_bytes() == blob
    assert b"".join(files.read_stream("/srv/data/blob.bin")) == blob

    files.remove("/srv/data", recursive=True)
    assert not files.exists("/srv/data")


def test_file_errors_are_typed(machine: Machine, tmp_path: Path) -> None:
    with pytest.raises(errors.GuestFileNotFoundError) as caught:
        machine.files.read("/no/such/file")
    assert caught.value.code == "GUEST_FILE_NOT_FOUND"
    assert isinstance(caught.value, errors.NotFoundError)
    with pytest.raises(errors.GuestFileNotFoundError):
        machine.files.download("/no/such/file", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    with pytest.raises(errors.ValidationError):
        machine.files.write("relative/path", b"x")


def test_pause_resume(machine: Machine) -> None:
    assert machine.pause().state == "paused"
    with pytest.raises(errors.InvalidTransitionError) as caught:
        machine.exec("true")
    assert caught.value.details["from_state"] == "paused"
    assert machine.resume().state == "running"
    assert machine.exec("echo back").stdout == "back\n"


def test_shell_runs_on_a_pty(machine: Machine) -> None:
    session = machine.shell(command=["/bin/sh"], rows=30, cols=100)
    try:
        session.send(b"tty; stty size; echo shell-$((6*7)); exit 3\n")
        screen = b"".join(session.output()).decode()
    finally:
        session.close()
    assert "/dev/pts/" in screen and "30 100" in screen and "shell-42" in screen
    assert session.exit_code == 3


def test_logs_show_console_output(machine: Machine) -> None:
    machine.exec("echo marker-on-the-console > /dev/console").assert_success()
    assert "marker-on-the-console" in "".join(machine.logs())


def test_snapshot_fork_stop_and_delete(backend: Backend, machine: Machine) -> None:
    machine.files.write("/root/state.txt", "before snapshot")
    snap = machine.snapshot(f"sdk-snap-{backend.name}")
    try:
        assert snap.name in {s.name for s in Machine.list_snapshots(backend=backend)}
        with pytest.raises(errors.SnapshotAlreadyExistsError):
            machine.snapshot(snap.name)
        clones = snap.fork(1, env={"CLONE": "yes"})
        assert len(clones) == 1
        with clones[0] as clone:
            assert clone.info().source_snapshot == snap.name
            assert clone.files.read_text("/root/state.txt") == "before snapshot"
            assert clone.exec("echo $CLONE").stdout == "yes\n"
            clone.stop(graceful=False)
            assert clone.state == "stopped"
            with pytest.raises(errors.InvalidTransitionError):
                clone.exec("true")
        with pytest.raises(errors.VMNotFoundError):
            Machine.connect(clones[0].id, backend=backend)
    finally:
        snap.delete()
    with pytest.raises(errors.SnapshotNotFoundError):
        Machine.fork(snap.name, backend=backend)


def test_context_manager_deletes_on_error(backend: Backend) -> None:
    made: list[str] = []
    with pytest.raises(RuntimeError, match="agent crashed"), \
            Machine.create(backend=backend) as m:
        made.append(m.id)
        assert m.exec("echo in").stdout == "in\n"
        raise RuntimeError("agent crashed")
    with pytest.raises(errors.VMNotFoundError):
        Machine.connect(made[0], backend=backend)


def test_create_rejects_bad_config_with_field(backend: Backend) -> None:
    with pytest.raises(errors.ValidationError) as caught:
        Machine.create(backend=backend, memory_mib=1)
    assert caught.value.details["field"] == "memory_mib"
    with pytest.raises(errors.ValidationError) as typo:
        Machine.create(backend=backend, memroy_mib=512)
    assert typo.value.details["field"] == "memroy_mib"


@pytest.mark.anyio
async def test_async_machine(backend: Backend, machine: Machine) -> None:
    am = await AsyncMachine.connect(machine.id, backend=backend)
    assert (await am.exec("echo async")).stdout == "async\n"
    chunks = [e async for e in am.exec_stream("echo a; echo b")]
    assert chunks[-1].kind == "exit" and chunks[-1].exit_code == 0
    await am.files.write("/tmp/async.txt", "from async")
    assert await am.files.read_text("/tmp/async.txt") == "from async"
    assert [c async for c in am.files.read_stream("/tmp/async.txt")] == [b"from async"]
    with pytest.raises(errors.GuestFileNotFoundError):
        await am.files.read("/tmp/missing")
    assert (await am.info()).state == "running"
    assert machine.id in {i.id for i in await AsyncMachine.list(backend=backend)}


@pytest.mark.anyio
async def test_async_shell_snapshot_fork_and_delete(backend: Backend, machine: Machine) -> None:
    am = await AsyncMachine.connect(machine.id, backend=backend)
    async with await am.shell(command=["/bin/sh"], rows=20, cols=60) as session:
        await session.send(b"stty size; echo async-$((6*7)); exit 5\n")
        screen = b"".join([chunk async for chunk in session.output()]).decode()
    assert "20 60" in screen and "async-42" in screen
    assert session.exit_code == 5

    await am.files.write("/root/async-state.txt", "async before")
    snap = await am.snapshot(f"sdk-async-snap-{backend.name}")
    try:
        assert isinstance(snap, AsyncSnapshot) and snap.name == snap.info.name
        listed = await AsyncMachine.list_snapshots(backend=backend)
        assert snap.name in {s.name for s in listed}
        assert snap.name in {s.name for s in await AsyncMachine.list_snapshots(
            machine.id, backend=backend)}
        (clone,) = await snap.fork(1, env={"CLONE": "async"})
        async with clone:
            assert isinstance(clone, AsyncMachine)
            assert (await clone.exec("cat /root/async-state.txt; echo \" $CLONE\"")).stdout == \
                "async before async\n"
    finally:
        await snap.delete()
    assert snap.name not in {s.name for s in await AsyncMachine.list_snapshots(backend=backend)}
    with pytest.raises(errors.SnapshotNotFoundError):
        await snap.delete()
    with pytest.raises(errors.VMNotFoundError):
        await AsyncMachine.connect(clone.id, backend=backend)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

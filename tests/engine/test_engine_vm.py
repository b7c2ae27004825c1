"""The engine against real QEMU machines under TCG (issue 4's acceptance list).

One machine is shared by the read-mostly tests of this module; tests that break a
machine (kill QEMU, boot timeouts) make their own.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.config import MachineConfig
from smolbox.engine.channels import claim_agent
from smolbox.engine.engine import Engine
from smolbox.engine.reconcile import qemu_processes_under
from smolbox.host.procs import ProcessIdentity
from smolbox.store import MachineRecord
from smolbox.store.states import MachineState
from smolbox.vmm.spec import AGENT_PORTS

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def machine(engine: Engine) -> Iterator[MachineRecord]:
    # A cold boot: this module covers that path (templates are covered in test_snapshots_vm).
    record = engine.create(MachineConfig(name="shared-exec", env={"GREETING": "hi"},
                                         from_template=False))
    yield record
    engine.delete(record.id, force=True)


def wait_until_dead(identity: ProcessIdentity) -> None:
    """SIGKILL is asynchronous: wait until the kernel has really ended the process."""
    deadline = time.monotonic() + 10
    while identity.is_alive():
        assert time.monotonic() < deadline, "process survived SIGKILL"
        time.sleep(0.01)


def assert_gone(engine: Engine, record: MachineRecord) -> None:
    with pytest.raises(errors.VMNotFoundError):
        engine.get(record.id)
    layout = engine.layout(record.id)
    assert not layout.machine_dir.exists(), "machine dir left behind"
    assert not layout.run_dir.exists(), "run dir left behind"
    assert record.id not in qemu_processes_under(engine.paths.run).values()


@pytest.mark.parametrize("from_template", [False, True], ids=["cold-boot", "from-template"])
def test_create_exec_delete_leaves_nothing(engine: Engine, from_template: bool) -> None:
    record = engine.create(MachineConfig(from_template=from_template))
    assert record.state == MachineState.RUNNING
    assert (record.source_snapshot is not None) == from_template
    result = engine.exec(record.id, ["python3", "-c", "print(6*7)"])
    assert result.stdout == "42\n"
    assert result.exit_code == 0 and result.success
    engine.delete(record.id)
    assert_gone(engine, record)


def test_twenty_concurrent_execs_all_answer_right(engine: Engine,
                                                  machine: MachineRecord) -> None:
    def run(i: int) -> str:
        return engine.exec(machine.id, ["sh", "-c", f"echo value-{i}"]).stdout

    with ThreadPoolExecutor(max_workers=20) as pool:
        outputs = list(pool.map(run, range(20)))
    assert outputs == [f"value-{i}\n" for i in range(20)]


def test_one_mib_stdout_arrives_intact(engine: Engine, machine: MachineRecord) -> None:
    result = engine.exec(machine.id, ["python3", "-c",
                                      "import sys; sys.stdout.write('ab' * 524288)"])
    assert result.stdout == "ab" * 524288


def test_binary_stdout_round_trips_byte_exact(engine: Engine, machine: MachineRecord) -> None:
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 64)"
    result = engine.exec(machine.id, ["python3", "-c", script])
    assert result.stdout_bytes == bytes(range(256)) * 64


@pytest.mark.parametrize(("command", "code"), [("true", 0), ("false", 1),
                                               ("no-such-command-here", 127)])
def test_exit_codes(engine: Engine, machine: MachineRecord, command: str, code: int) -> None:
    assert engine.exec(machine.id, command).exit_code == code


def test_signal_killed_process_reports_the_signal(engine: Engine,
                                                  machine: MachineRecord) -> None:
    result = engine.exec(machine.id, ["sh", "-c", "kill -9 $$"])
    assert result.signal == signal.SIGKILL
    assert not result.success
    with pytest.raises(errors.ExecutionError):
        result.assert_success()


def guest_pids(engine: Engine, vm_id: str, path: str, count: int) -> list[int]:
    """The pids a guest command wrote to ``path`` (one a line), once ``count`` are there."""
    deadline = time.monotonic() + 60
    while True:
        found = engine.exec(vm_id, f"cat {path} 2>/dev/null || true").stdout.split()
        if len(found) >= count:
            return [int(pid) for pid in found]
        assert time.monotonic() < deadline, f"the guest command never wrote {path}"
        time.sleep(0.1)


def guest_process_dead(engine: Engine, vm_id: str, pid: int) -> bool:
    """True once guest process ``pid`` is gone or a zombie (SIGKILL is asynchronous)."""
    probe = (f"s=$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null); "
             '[ -z "$s" ] || [ "$s" = Z ]')
    deadline = time.monotonic() + 30
    while engine.exec(vm_id, probe).exit_code != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_timeout_kills_the_process_group_and_machine_stays_usable(
        engine: Engine, machine: MachineRecord) -> None:
    """A shell with a backgrounded and a foreground child: all three end on timeout
    (killing only the shell would leave both sleeps running)."""
    pids = f"/tmp/timeout-pids-{time.monotonic_ns()}"
    script = f"sleep 100 & echo $! > {pids}; echo $$ >> {pids}; sleep 100"
    started = time.monotonic()
    with pytest.raises(errors.OperationTimeoutError):
        engine.exec(machine.id, ["sh", "-c", script], timeout=2)
    assert time.monotonic() - started < 60  # returned, not hung (no performance claim)
    assert engine.exec(machine.id, "echo still-here").stdout == "still-here\n"
    background, shell = guest_pids(engine, machine.id, pids, 2)
    assert guest_process_dead(engine, machine.id, shell), "the timed-out shell survived"
    assert guest_process_dead(engine, machine.id, background), \
        "the backgrounded sleep survived: the process group was not killed"


def test_config_env_hostname_and_console(engine: Engine, machine: MachineRecord) -> None:
    assert engine.exec(machine.id, "echo $GREETING").stdout == "hi\n"
    assert engine.exec(machine.id, "hostname").stdout.strip() == "shared-exec"
    assert "SMOLBOX_READY" in "".join(engine.logs(machine.id))


def test_files_round_trip_and_validate_paths(engine: Engine, machine: MachineRecord) -> None:
    payload = os.urandom(300_000)
    with engine.guest(machine.id, "files") as agent:
        agent.write_file("/tmp/blob.bin", payload)
        assert agent.read_file("/tmp/blob.bin") == payload
        with pytest.raises(errors.ValidationError):
            agent.read_file("relative/path")
        with pytest.raises(errors.GuestFileNotFoundError):
            agent.read_file("/no/such/file")


def test_exec_on_a_stopped_machine_is_an_invalid_transition(engine: Engine) -> None:
    record = engine.create(MachineConfig(), start=False)
    try:
        assert record.state == MachineState.STOPPED
        with pytest.raises(errors.InvalidTransitionError):
            engine.exec(record.id, "true")
    finally:
        engine.delete(record.id)
    assert_gone(engine, record)


def test_stop_start_keeps_the_disk(engine: Engine) -> None:
    record = engine.create(MachineConfig())
    try:
        engine.exec(record.id, "echo persisted > /root/note && sync").assert_success()
        step = engine.stop(record.id)
        assert step == "agent", f"a healthy guest must power off gracefully, not by {step}"
        assert engine.get(record.id).state == MachineState.STOPPED
        assert not engine.layout(record.id).run_dir.exists()
        engine.start(record.id)
        assert engine.exec(record.id, "cat /root/note").stdout == "persisted\n"
    finally:
        engine.delete(record.id, force=True)
    assert_gone(engine, record)


def test_kill_9_during_exec_gives_vm_crashed_then_error_state(engine: Engine) -> None:
    record = engine.create(MachineConfig())
    outcome: dict[str, BaseException] = {}
    started = "/tmp/long-exec-started"

    def long_exec() -> None:
        try:
            engine.exec(record.id, ["sh", "-c", f"touch {started}; exec sleep 600"])
        except BaseException as err:
            outcome["error"] = err

    worker = threading.Thread(target=long_exec)
    worker.start()
    try:
        # kill QEMU only once the command really runs in the guest
        deadline = time.monotonic() + 60
        while engine.exec(record.id, ["test", "-e", started]).exit_code != 0:
            assert time.monotonic() < deadline, "the long exec never started"
            time.sleep(0.1)
        assert record.pid is not None
        os.kill(record.pid, signal.SIGKILL)
        worker.join(timeout=30)
        assert not worker.is_alive(), "exec hung after QEMU was killed"
        error = outcome.get("error")
        assert isinstance(error, errors.VMCrashedError), repr(error)
        assert error.code == "VM_CRASHED" and error.details["id"] == record.id
        assert engine.get(record.id).state == MachineState.ERROR
        engine.reconcile()
        assert engine.get(record.id).state == MachineState.ERROR
        with pytest.raises(errors.InvalidTransitionError):
            engine.exec(record.id, "true")
    finally:
        worker.join(timeout=30)
        engine.delete(record.id, force=True)
    assert_gone(engine, record)


def test_reconcile_marks_a_silently_dead_machine_error(engine: Engine) -> None:
    record = engine.create(MachineConfig())
    assert record.pid is not None and record.pid_start_time is not None
    os.kill(record.pid, signal.SIGKILL)
    wait_until_dead(ProcessIdentity(record.pid, record.pid_start_time))
    with Engine.open() as other_process_view:  # an opened engine reconciles first
        report = other_process_view.startup_report
    assert record.id in report.marked_error
    stored = engine.get(record.id)
    assert stored.state == MachineState.ERROR and stored.error_reason
    engine.delete(record.id)
    assert_gone(engine, record)


def test_reconcile_kills_orphaned_qemu_and_removes_its_files(engine: Engine) -> None:
    record = engine.create(MachineConfig())
    # Simulate a delete that crashed after removing the row but before stopping QEMU.
    engine.store.transition(record.id, MachineState.ERROR, error_reason="test")
    engine.store.transition(record.id, MachineState.DELETED)
    engine.store.delete_machine(record.id)
    assert record.id in qemu_processes_under(engine.paths.run).values()
    report = engine.reconcile()
    assert record.pid in report.killed_pids
    deadline = time.monotonic() + 5
    while record.id in qemu_processes_under(engine.paths.run).values():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_gone(engine, record)


def test_boot_timeout_reports_console_tail_and_cleans_up(engine: Engine) -> None:
    before = {r.id for r in engine.list_machines()}
    run_dirs = {d.name for d in engine.paths.run.iterdir()}
    qemus = set(qemu_processes_under(engine.paths.run))
    with pytest.raises(errors.OperationTimeoutError) as caught:
        engine.create(MachineConfig(timeouts={"boot": 0.3}, from_template=False))
    assert "console_tail" in caught.value.details
    assert {r.id for r in engine.list_machines()} == before
    assert not [d for d in engine.paths.machines.iterdir() if d.name not in before]
    assert not [d for d in engine.paths.run.iterdir() if d.name not in run_dirs], \
        "run dir left behind"
    new_qemus = set(qemu_processes_under(engine.paths.run)) - qemus
    assert not new_qemus, f"the timed-out machine's QEMU is still running: {new_qemus}"


def test_unknown_image_leaves_no_row(engine: Engine) -> None:
    before = {r.id for r in engine.list_machines()}
    with pytest.raises(errors.ImageNotFoundError):
        engine.create(MachineConfig(image="no-such-image"))
    assert {r.id for r in engine.list_machines()} == before


def test_another_process_can_exec_while_this_one_holds_a_connection(
        engine: Engine, machine: MachineRecord) -> None:
    engine.exec(machine.id, "true")  # this process now holds one agent port
    cli = Path(sys.executable).with_name("smolbox")
    done = subprocess.run([str(cli), "exec", machine.id, "--", "echo", "from-cli"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from-cli\n"


def test_all_agent_ports_taken_is_a_typed_retryable_error(
        engine: Engine, machine: MachineRecord) -> None:
    engine.exec(machine.id, "true")  # port 0 is held by the engine's cached connection
    run_dir = engine.layout(machine.id).run_dir
    held = [claim_agent(run_dir, vm_id=machine.id, timeout=10) for _ in range(AGENT_PORTS - 1)]
    try:
        with pytest.raises(errors.CommandExecutionUnavailableError) as caught:
            claim_agent(run_dir, vm_id=machine.id, timeout=0.3)
        assert caught.value.retryable
        assert held[0].client.exec(["echo", "port-1"]).stdout == "port-1\n"
    finally:
        for lease in held:
            lease.close()
    spare = claim_agent(run_dir, vm_id=machine.id, timeout=10)
    spare.close()


def test_large_writes_go_through_the_transfer_disk_byte_exact(
        engine: Engine, machine: MachineRecord, tmp_path: Path) -> None:
    payload = os.urandom((20 << 20) + 12345)  # more than one transfer-disk chunk, unaligned
    assert engine.write_file(machine.id, "/root/large.bin", payload, mode=0o600) == (
        "transfer-disk")
    digest = engine.exec(machine.id, "sha256sum /root/large.bin").stdout.split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()
    assert engine.exec(machine.id, "stat -c %a /root/large.bin").stdout == "600\n"
    leftovers = engine.exec(machine.id, "ls -a /root | grep smolbox- || true").stdout
    assert leftovers == "", "a temp file of the atomic write was left behind"
    host_file = tmp_path / "upload.bin"
    host_file.write_bytes(payload[: 3 << 20])
    host_file.chmod(0o640)
    assert engine.upload(machine.id, host_file, "/root/uploaded.bin") == "transfer-disk"
    assert engine.write_file(machine.id, "/root/small.bin", b"tiny") == "stream"
    assert engine.exec(machine.id, "stat -c %a:%s /root/uploaded.bin").stdout == (
        f"640:{3 << 20}\n")


def test_transfer_disk_errors_are_typed_and_leave_it_usable(
        engine: Engine, machine: MachineRecord) -> None:
    payload = os.urandom(2 << 20)
    with pytest.raises(errors.GuestFileNotFoundError):
        engine.write_file(machine.id, "/no/such/dir/file.bin", payload)
    with pytest.raises(errors.ValidationError):
        engine.write_file(machine.id, "relative.bin", payload)
    with pytest.raises(errors.ValidationError):
        engine.upload(machine.id, "/no/such/host/file", "/root/x")
    assert engine.write_file(machine.id, "/root/after-error.bin", payload) == "transfer-disk"
    assert engine.exec(machine.id, "stat -c %s /root/after-error.bin").stdout == f"{2 << 20}\n"


def test_a_busy_transfer_disk_falls_back_to_the_serial_stream(
        engine: Engine, machine: MachineRecord) -> None:
    import fcntl

    payload = os.urandom(3 << 20)
    with open(engine.layout(machine.id).xfer_disk, "rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another upload holds the disk
        assert engine.write_file(machine.id, "/root/fallback.bin", payload) == "stream"
    digest = engine.exec(machine.id, "sha256sum /root/fallback.bin").stdout.split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()


def test_reads_and_downloads_through_the_transfer_disk(
        engine: Engine, machine: MachineRecord, tmp_path: Path) -> None:
    payload = os.urandom((17 << 20) + 4321)  # crosses a chunk boundary, unaligned end
    engine.write_file(machine.id, "/root/down.bin", payload)
    assert engine.read_file(machine.id, "/root/down.bin") == payload
    target = tmp_path / "down.bin"
    engine.download(machine.id, "/root/down.bin", target)
    assert target.read_bytes() == payload
    assert engine.read_file(machine.id, "/root/.profile").startswith(b"#")
    with pytest.raises(errors.GuestFileNotFoundError):
        engine.read_file(machine.id, "/root/missing.bin")
    with pytest.raises(errors.GuestFileError):
        engine.read_file(machine.id, "/root")
    with pytest.raises(errors.ValidationError):
        engine.download(machine.id, "/root/down.bin", tmp_path / "no-dir" / "x.bin")
    assert not list(tmp_path.glob(".*smolbox-part")), "a partial download was left"


def test_an_image_in_use_cannot_be_removed(engine: Engine, machine: MachineRecord) -> None:
    with pytest.raises(errors.ConflictError) as caught:
        engine.remove_image("default")
    assert machine.name in caught.value.details["machines"]
    assert engine.images.get("default").rootfs.exists()
    assert engine.exec(machine.id, "echo still-fine").stdout == "still-fine\n"


def test_the_console_log_stays_bounded_and_keeps_the_newest_output(
        engine: Engine, machine: MachineRecord) -> None:
    """A guest flooding its console: the ring drops the oldest bytes, the host log keeps
    at most LOG_LIMIT bytes and always the latest output."""
    from smolbox.vmm.console import LOG_LIMIT
    from smolbox.vmm.spec import CONSOLE_RING_BYTES

    log = engine.layout(machine.id).console_log
    chunk = (CONSOLE_RING_BYTES * 3) // 4
    for i in range(4):  # 3 MiB in all, drained after each chunk
        engine.exec(machine.id, f"head -c {chunk} /dev/zero | tr '\\0' x > /dev/ttyS0; "
                                f"echo FLOOD-MARK-{i} > /dev/ttyS0", timeout=600).assert_success()
        text = "".join(engine.logs(machine.id))
        assert f"FLOOD-MARK-{i}" in text, "the newest console output is missing"
        assert log.stat().st_size <= LOG_LIMIT
    assert "FLOOD-MARK-0" not in "".join(engine.logs(machine.id)), "the log was not trimmed"
    # one flood bigger than the ring: only the ring's worth reaches the host
    before = log.stat().st_size
    engine.exec(machine.id, f"head -c {CONSOLE_RING_BYTES * 2} /dev/zero | tr '\\0' y "
                            "> /dev/ttyS0; echo FLOOD-END > /dev/ttyS0",
                timeout=600).assert_success()
    text = "".join(engine.logs(machine.id))
    assert text.rstrip().endswith("FLOOD-END")
    assert text.count("y") <= CONSOLE_RING_BYTES
    assert log.stat().st_size <= LOG_LIMIT and before <= LOG_LIMIT

"""VMM layer without a guest: the argv contract, spawn failures, the shutdown ladder.

These use real processes (a real QEMU given a bogus kernel, real children that
ignore SIGTERM) rather than mocks: the ladder's job is to deal with real ones.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host.procs import ProcessIdentity
from smolbox.vmm.process import spawn
from smolbox.vmm.shutdown import LadderTimeouts, stop_process
from smolbox.vmm.spec import AGENT_PORT_NAME, RamBacking, VMSpec, build_argv


def spec_for(tmp_path: Path, **kw: object) -> VMSpec:
    base = {"name": "t1", "kernel": tmp_path / "vmlinux", "cmdline": "console=ttyS0",
            "disk": tmp_path / "disk.qcow2", "run_dir": tmp_path}
    base.update(kw)
    return VMSpec(**base)  # type: ignore[arg-type]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_argv_is_a_microvm_without_acpi_that_exits_on_reboot(tmp_path: Path) -> None:
    argv = build_argv(spec_for(tmp_path, memory_mib=512, vcpus=2))
    assert flag_values(argv, "-M")[0].startswith("microvm,acpi=off,rtc=on")
    assert "-no-reboot" in argv and "-daemonize" in argv and "-nodefaults" in argv
    assert flag_values(argv, "-smp") == ["2"]
    assert "memory-backend-ram,id=mem0,size=512M" in flag_values(argv, "-object")
    drive = flag_values(argv, "-drive")[0]
    assert "cache=unsafe" in drive and "format=qcow2" in drive
    assert any(AGENT_PORT_NAME in d for d in flag_values(argv, "-device"))
    assert any(c.startswith("ringbuf,") for c in flag_values(argv, "-chardev"))
    assert "-incoming" not in argv


def test_argv_ram_file_backings_and_incoming(tmp_path: Path) -> None:
    shared = build_argv(spec_for(tmp_path, ram=RamBacking("file", tmp_path / "ram", True),
                                 incoming=True))
    assert f"memory-backend-file,id=mem0,size=256M,mem-path={tmp_path / 'ram'},share=on" in (
        flag_values(shared, "-object"))
    assert flag_values(shared, "-incoming") == ["defer"]
    private = build_argv(spec_for(tmp_path, ram=RamBacking("file", tmp_path / "ram", False)))
    assert any(o.endswith("share=off") for o in flag_values(private, "-object"))


def test_spawn_with_a_bogus_kernel_raises_spawn_error_with_stderr(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(b"not a kernel")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"),
                    "64M"], check=True)
    with pytest.raises(errors.SpawnError) as caught:
        spawn(spec_for(tmp_path))
    assert caught.value.details["stderr"].strip()
    assert caught.value.code == "SPAWN_FAILED"


def _stubborn_child() -> subprocess.Popen[bytes]:
    """A process that ignores SIGTERM: only the last rung of the ladder stops it."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()
    return child


def test_ladder_falls_through_to_sigkill_and_names_the_step(tmp_path: Path) -> None:
    child = _stubborn_child()
    identity = ProcessIdentity.of(child.pid)
    reaper = None
    try:
        import threading

        reaper = threading.Thread(target=child.wait)
        reaper.start()
        step = stop_process(identity, tmp_path / "no-qmp.sock", vm_id="t",
                            timeouts=LadderTimeouts(agent=0.1, quit=0.1, sigterm=0.3,
                                                    sigkill=5))
        assert step == "sigkill"
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        if reaper is not None:
            reaper.join()


def test_ladder_uses_the_agent_step_when_the_guest_cooperates(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessIdentity.of(child.pid)
    import threading

    reaper = threading.Thread(target=child.wait)
    reaper.start()
    try:
        step = stop_process(identity, tmp_path / "no-qmp.sock", vm_id="t",
                            agent_shutdown=child.terminate)
        assert step == "agent"
    finally:
        child.kill()
        reaper.join()


def test_ladder_never_signals_a_reused_pid(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real = ProcessIdentity.of(child.pid)
        impostor = ProcessIdentity(child.pid, real.start_time + 12345)
        assert stop_process(impostor, tmp_path / "no-qmp.sock", vm_id="t") == "already-stopped"
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_append_bounded_keeps_only_the_newest_bytes(tmp_path: Path) -> None:
    from smolbox.vmm.console import append_bounded, tail

    log = tmp_path / "console.log"
    append_bounded(log, b"a" * 600, limit=1000)
    append_bounded(log, b"b" * 600, limit=1000)
    data = log.read_bytes()
    assert len(data) == 1000 and data == b"a" * 400 + b"b" * 600
    assert tail(log, limit=10) == "b" * 10
    assert tail(tmp_path / "missing.log") == ""
    assert not list(tmp_path.glob("*.tmp"))

"""The guest init + agent inside a real QEMU VM (TCG), driven by the real AgentClient.

Boots the default image once per module (built or reused by the images
package) with the same virtio-serial wiring the engine uses, so what is tested
here is exactly what runs in production: /sbin/smolbox-init as PID 1, the agent
on the ``org.smolbox.agent`` port, reconnects across host clients, power-off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.channel import AgentClient
from smolbox.errors import OperationTimeoutError
from smolbox.images.bootcheck import qemu_argv
from smolbox.images.testing import ensure_default_image
from smolbox.paths import Paths

pytestmark = pytest.mark.vm


class BootedVM:
    """One QEMU process with its overlay, console file and agent socket."""

    def __init__(self) -> None:
        image = ensure_default_image(Paths.from_env())
        self.dir = Path(tempfile.mkdtemp(prefix="sbg-"))
        self.socket = self.dir / "agent.sock"
        self.console = self.dir / "console.log"
        overlay = self.dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs),
                        "-F", "raw", str(overlay)], check=True, capture_output=True)
        self.console.touch()
        argv = [*qemu_argv(image, overlay, self.console, self.socket), "-no-reboot"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def connect(self, timeout: float = 120.0) -> AgentClient:
        return AgentClient.connect(self.socket, vm_id="guest-vm", timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def vm() -> Iterator[BootedVM]:
    booted = BootedVM()
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def guest(vm: BootedVM) -> Iterator[AgentClient]:
    with vm.connect() as client:
        yield client


def test_init_is_pid_one_and_announces_readiness(guest: AgentClient, vm: BootedVM) -> None:
    assert b"SMOLBOX_READY" in vm.console.read_bytes()
    comm = guest.exec("cat /proc/1/cmdline | tr '\\0' ' '").stdout
    assert "smolbox-init" in comm
    mounts = guest.read_file("/proc/mounts").decode()
    for target in ("/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/run", "/sys/fs/cgroup"):
        assert f" {target} " in mounts, target
    flags = int(guest.read_file("/sys/class/net/lo/flags").decode().strip(), 16)
    assert flags & 0x1, "loopback is not up"


def test_exec_basics_in_the_guest(guest: AgentClient) -> None:
    res = guest.exec("echo out; echo err >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert guest.exec("nonexistent-cmd").exit_code == 127
    assert guest.exec(["id", "-u"], user="nobody").stdout.strip() == "65534"
    assert guest.exec("cat", stdin=b"in").stdout == "in"


def test_orphans_are_reaped_by_pid_one(guest: AgentClient) -> None:
    """Orphans that exit must leave /proc entirely (reaped), not linger as zombies."""
    spawned = guest.exec("for i in 1 2 3 4 5; do (sleep 0.1 & echo $!) ; done").stdout.split()
    assert len(spawned) == 5
    deadline = time.monotonic() + 60
    while True:
        left = guest.exec(" ".join(["for p in", *spawned, "; do [ -e /proc/$p ] && echo $p; done;",
                                    "true"])).stdout.split()
        if not left:
            break
        assert time.monotonic() < deadline, f"orphans {left} were never reaped by PID 1"
        time.sleep(0.1)


def test_twenty_concurrent_execs_in_the_guest(guest: AgentClient) -> None:
    out: dict[int, str] = {}

    def run(i: int) -> None:
        out[i] = guest.exec(["echo", str(i)]).stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: f"{i}\n" for i in range(20)}


def test_timeout_in_the_guest(guest: AgentClient) -> None:
    with pytest.raises(OperationTimeoutError):
        guest.exec("sleep 100", timeout=1)
    assert guest.exec("echo alive").stdout == "alive\n"


def test_large_file_round_trip_in_the_guest(guest: AgentClient, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(16 << 20))
    guest.upload(src, "/tmp/big.bin")
    assert guest.exec("sha256sum /tmp/big.bin").stdout.split()[0] == hashlib.sha256(
        src.read_bytes()).hexdigest()
    dst = tmp_path / "dst.bin"
    guest.download("/tmp/big.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    guest.remove("/tmp/big.bin")


def test_identity_changes_the_guest(guest: AgentClient) -> None:
    target = 1_900_000_000 * 10**9
    guest.set_identity("clone-42", "0123456789abcdef0123456789abcdef", os.urandom(64), target)
    assert guest.exec("hostname").stdout.strip() == "clone-42"
    assert guest.read_file("/etc/machine-id") == b"0123456789abcdef0123456789abcdef\n"
    assert int(guest.exec("date +%s").stdout) >= 1_900_000_000
    guest.sync_time()
    assert abs(int(guest.exec("date +%s").stdout) - time.time()) < 60


def test_reconnect_and_background_process(vm: BootedVM, guest: AgentClient) -> None:
    proc = guest.spawn("read x; echo got-$x")
    guest.close()
    with vm.connect(timeout=30) as again:
        handle = again.attach(proc.pid)
        handle.send_stdin(b"yes\n")
        assert handle.wait().stdout == "got-yes\n"
    with vm.connect(timeout=30) as third:
        assert third.exec("echo third").stdout == "third\n"


def test_shutdown_ends_qemu(vm: BootedVM) -> None:
    client = vm.connect(timeout=30)
    client.shutdown()
    assert vm.proc.wait(timeout=60) == 0

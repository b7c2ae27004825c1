"""A full disk, made by the test: typed errors, list/info/rm keep working, frozen
machines resume once space is freed (real VMs, the real CLI, a loop-mounted ext4).

``SMOLBOX_HOME`` (database, template snapshot, machine overlays) lives on a small
ext4 filesystem the test creates and mounts; images stay in the session catalogue.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox.paths import Paths

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0,
                                                  reason="mounting a loop device needs root")]
SIZE_MIB = 200


def _fill(directory: Path) -> list[Path]:
    """Write files until the filesystem refuses even a 1 KiB block."""
    made = []
    for index, block in enumerate((1 << 20, 1 << 10)):
        path = directory / f"filler{len(list(directory.glob('filler*')))}-{index}"
        try:
            with open(path, "wb") as out:
                made.append(path)
                while True:
                    out.write(b"\0" * block)
                    out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return made


@pytest.fixture()
def small_disk(tmp_path: Path, default_image: object) -> Iterator[Path]:
    # A short mount point: the snapshot helper's unix sockets live under SMOLBOX_HOME
    # and their paths must stay under 108 bytes (pytest's tmp_path is too deep).
    image, mount = tmp_path / "disk.img", Path(tempfile.mkdtemp(prefix="sbdf-"))
    with open(image, "wb") as out:
        out.truncate(SIZE_MIB << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        for name in ("victim", "spare"):
            smolbox(mount, "rm", "--force", name)
        holders = _processes_using(mount)
        if holders:  # a leak: kill it so the mount can go, then fail the test loudly
            for pid in holders:
                os.kill(pid, 9)
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()
        assert not holders, f"processes still using the disk after rm: {holders}"


def _processes_using(mount: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(mount).encode() in argv:
            found.append(int(entry.name))
    return found


def _env(mount: Path) -> dict[str, str]:
    return {**os.environ, "SMOLBOX_HOME": str(mount / "home"),
            "SMOLBOX_IMAGES": str(Paths.from_env().images),
            "SMOLBOX_RUN": str(mount / "home" / "run")}


def smolbox(mount: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smolbox.cli.main", "--json", *args],
                          env=_env(mount), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _error(result: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    body = json.loads(result.stderr.strip().splitlines()[-1])
    return body.get("error", body)


def test_full_disk_gives_typed_errors_and_read_commands_work(small_disk: Path) -> None:
    made = smolbox(small_disk, "create", "--name", "victim")
    assert made.returncode == 0, made.stderr[-3000:]
    assert smolbox(small_disk, "create", "--name", "spare").returncode == 0
    blob_mib = 12  # more than the store's disk reserve, which a full disk releases
    made = smolbox(small_disk, "exec", "spare", "--", "sh", "-c",
                   f"dd if=/dev/urandom of=/root/blob bs=1M count={blob_mib} && sync")
    assert made.returncode == 0, made.stderr
    fillers = _fill(small_disk)
    assert shutil.disk_usage(small_disk).free < (1 << 20)

    # A host-side write onto the full disk is DISK_SPACE_LOW with the path, not OSError.
    copied = smolbox(small_disk, "cp", "spare:/root/blob", str(small_disk / "out"))
    assert copied.returncode != 0
    error = _error(copied)
    assert error["code"] == "DISK_SPACE_LOW", error
    assert error["details"]["free_bytes"] < (1 << 20)

    # The guest writes to its disk: QEMU stops the VM on ENOSPC (io-error). The exec
    # fails typed — DISK_SPACE_LOW naming the run state — not a hang or a timeout.
    result = smolbox(small_disk, "exec", "victim", "--", "sh", "-c",
                     "dd if=/dev/urandom of=/root/big bs=1M count=64 oflag=direct")
    assert result.returncode != 0
    error = _error(result)
    assert error["code"] == "DISK_SPACE_LOW", error
    assert error["details"].get("vmm_status") == "io-error", error

    # Read-only commands (and rm) still work on the full disk.
    listed = smolbox(small_disk, "list")
    assert listed.returncode == 0, listed.stderr
    assert {m["name"] for m in json.loads(listed.stdout)} == {"victim", "spare"}
    info = smolbox(small_disk, "info", "victim")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["vmm_status"] == "io-error"
    removed = smolbox(small_disk, "rm", "--force", "spare")
    assert removed.returncode == 0, removed.stderr

    # Space freed: the frozen machine resumes and its agent answers again.
    for path in fillers:
        path.unlink()
    resumed = smolbox(small_disk, "resume", "victim")
    assert resumed.returncode == 0, resumed.stderr
    echoed = smolbox(small_disk, "exec", "victim", "--", "echo", "back")
    assert echoed.returncode == 0 and "back" in echoed.stdout, echoed.stderr

"""The files one machine owns on the host, in one place so delete can remove them all.

``machine_dir`` (under SMOLBOX_HOME/machines) holds what survives a stop: the disk
overlay and the persisted console log. ``run_dir`` (under SMOLBOX_RUN, kept short
for unix socket path limits) holds what only exists while QEMU runs: sockets and
the pidfile. Both are 0700: sockets give full control of the guest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from smolbox.paths import Paths
from smolbox.vmm import jail
from smolbox.vmm.spec import QMP_SOCKET


@dataclass(frozen=True)
class MachineLayout:
    machine_dir: Path
    run_dir: Path

    @classmethod
    def of(cls, paths: Paths, vm_id: str) -> MachineLayout:
        return cls(machine_dir=paths.machine_dir(vm_id), run_dir=paths.run_dir(vm_id))

    @property
    def disk(self) -> Path:
        return self.machine_dir / "disk.qcow2"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / QMP_SOCKET

    @property
    def xfer_disk(self) -> Path:
        return self.machine_dir / "xfer.img"

    @property
    def seed_disk(self) -> Path:
        """A cloud-init seed (raw, read-only to the guest) for an image without the agent."""
        return self.machine_dir / "seed.img"

    @property
    def console_log(self) -> Path:
        return self.machine_dir / "console.log"

    def create(self) -> None:
        for directory in (self.machine_dir, self.run_dir):
            directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            directory.mkdir(mode=0o700, exist_ok=True)
            directory.chmod(0o700)

    def clear_run_dir(self) -> None:
        jail.release(self.run_dir)  # a crashed QEMU's cgroup and uid go with its run dir
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def remove(self) -> None:
        self.clear_run_dir()
        shutil.rmtree(self.machine_dir, ignore_errors=True)

    def exists(self) -> bool:
        return self.machine_dir.exists() or self.run_dir.exists()

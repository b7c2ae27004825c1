"""Where smolbox keeps its state on the host.

Everything is derived from a few environment variables so tests (and users with a
bigger disk) can move it, and nothing machine-specific is written into the code:

- ``SMOLBOX_HOME``   state: database, machines, snapshots (default ``~/.local/share/smolbox``)
- ``SMOLBOX_IMAGES`` the image catalogue (default ``$SMOLBOX_HOME/images``)
- ``SMOLBOX_CACHE``  heavy build outputs reused across clones (default ``~/.cache/smolbox``)
- ``SMOLBOX_RUN``    per-machine run dirs holding sockets (default ``$SMOLBOX_HOME/run``);
  kept short because unix socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class Paths:
    """The resolved set of smolbox directories (created on demand, 0700)."""

    home: Path
    images: Path
    cache: Path
    run: Path

    @classmethod
    def from_env(cls) -> Paths:
        home = _env_path("SMOLBOX_HOME", Path.home() / ".local" / "share" / "smolbox")
        return cls(
            home=home,
            images=_env_path("SMOLBOX_IMAGES", home / "images"),
            cache=_env_path("SMOLBOX_CACHE", Path.home() / ".cache" / "smolbox"),
            run=_env_path("SMOLBOX_RUN", home / "run"),
        )

    @property
    def database(self) -> Path:
        return self.home / "smolbox.db"

    @property
    def machines(self) -> Path:
        return self.home / "machines"

    @property
    def snapshots(self) -> Path:
        return self.home / "snapshots"

    def machine_dir(self, machine_id: str) -> Path:
        return self.machines / machine_id

    def run_dir(self, machine_id: str) -> Path:
        return self.run / machine_id

    def ensure(self, *dirs: Path) -> None:
        """Create directories private to the user: sockets and disks are not for others."""
        for directory in dirs or (self.home, self.images, self.cache, self.run,
                                  self.machines, self.snapshots):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)

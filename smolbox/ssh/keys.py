"""Per-machine SSH keys: the login key smolbox uses and the guest's host key.

Why smolbox makes the host key: it is written into the guest by cloud-init, so the
key is known before the first boot and every connection checks it; nothing is ever
accepted on first use. Keys live 0600 in a 0700 folder per machine and go with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from smolbox.errors import SSHError


@dataclass(frozen=True)
class MachineKeys:
    """Paths and public halves of one machine's keys."""

    folder: Path
    client_key: Path
    client_public: str
    host_private: str
    host_public: str


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def ensure_keys(folder: Path, *, client_key: Path | None = None) -> MachineKeys:
    """Create (once) or read the keys in ``folder``; ``client_key`` is the VMFile's own
    private key, used instead of a generated one."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        host = folder / "host_ed25519"
        if not host.is_file():
            _write_private(host, asyncssh.generate_private_key("ssh-ed25519")
                           .export_private_key())
        login = client_key or folder / "client_ed25519"
        if client_key is None and not login.is_file():
            _write_private(login, asyncssh.generate_private_key("ssh-ed25519")
                           .export_private_key())
        host_key = asyncssh.read_private_key(host)
        login_key = asyncssh.read_private_key(login)
    except (OSError, asyncssh.KeyImportError) as err:
        raise SSHError(reason=f"cannot prepare SSH keys in {folder}: {err}") from None
    return MachineKeys(
        folder=folder, client_key=login,
        client_public=login_key.export_public_key().decode().strip(),
        host_private=host.read_text(),
        host_public=host_key.export_public_key().decode().strip(),
    )

"""Server settings and the bearer token it is guarded by.

Why a token file under SMOLBOX_HOME: auth must be on by default, yet a user
should not have to invent and pass a secret to try the server. The first start
writes a random token with mode 0600 (created exclusively, so a concurrent start
cannot read a half-written file); later starts reuse it, and clients on the same
host can read it from there or from SMOLBOX_TOKEN.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors
from smolbox.paths import Paths

TOKEN_FILE = "server.token"
DEFAULT_PORT = 7777
MiB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """What ``create_app`` needs; ``token=None`` disables auth (explicit opt-out only)."""

    token: str | None
    max_upload_bytes: int = 1024 * MiB
    max_download_bytes: int = 1024 * MiB
    max_body_bytes: int = 8 * MiB  # every other request body (JSON)
    # calls into one machine's guest at once (more get MACHINE_BUSY 429), and worker
    # threads for all such calls together (see server/workers.py)
    max_calls_per_machine: int = 16
    max_machine_threads: int = 64


def token_path(paths: Paths | None = None) -> Path:
    return (paths or Paths.from_env()).home / TOKEN_FILE


def load_or_create_token(path: Path) -> str:
    """The token stored at ``path``, made (0600, exclusively) if it does not exist."""
    try:
        token = path.read_text().strip()
        if token:
            _check_private(path)
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise errors.HostError(f"Cannot read the server token file {path}: {exc.strerror}",
                               details={"path": str(path)}) from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server won the race: use its token
        return load_or_create_token(path)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise errors.HostError(
            f"The server token file {path} is readable by other users (mode {mode:o})",
            details={"path": str(path), "mode": f"{mode:o}"},
            help=f"Run `chmod 600 {path}`, or delete it to have a new token generated.")

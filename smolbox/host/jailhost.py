"""What the host offers a jail, and the user's jail settings (read from the environment).

Why in ``host``: ``smolbox doctor`` (host layer) must report which containment layers
this host supports and whether the user opted out, without importing the VMM layer
that builds the jails (``smolbox.vmm.jail``).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from smolbox import errors
from smolbox.host import cgroups

__all__ = ["DEFAULT_STATE", "DEFAULT_UIDS", "JailSettings", "UidRange", "support"]

DEFAULT_UIDS = "1800000000-1800065535"
DEFAULT_STATE = "/run/smolbox-jail"


@dataclass(frozen=True)
class UidRange:
    """``first`` is the shared reader group of jailed QEMUs; machines get the rest."""

    first: int
    last: int

    @property
    def reader_gid(self) -> int:
        return self.first


@dataclass(frozen=True)
class JailSettings:
    """``SMOLBOX_JAIL`` (on|off), ``SMOLBOX_JAIL_UIDS`` (FIRST-LAST), and the host-wide
    claim directory ``SMOLBOX_JAIL_STATE`` (a tmpfs path, so a reboot frees all)."""

    enabled: bool = True
    uids: UidRange = field(default_factory=lambda: _parse_uids(DEFAULT_UIDS))
    state_dir: Path = Path(DEFAULT_STATE)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> JailSettings:
        env = dict(os.environ) if env is None else env
        mode = env.get("SMOLBOX_JAIL", "on").strip().lower()
        if mode not in ("on", "off"):
            raise errors.InvalidConfigError(f"SMOLBOX_JAIL must be 'on' or 'off', not {mode!r}",
                                            field="SMOLBOX_JAIL", value=mode)
        return cls(enabled=mode == "on",
                   uids=_parse_uids(env.get("SMOLBOX_JAIL_UIDS", DEFAULT_UIDS)),
                   state_dir=Path(env.get("SMOLBOX_JAIL_STATE") or DEFAULT_STATE))


def _parse_uids(text: str) -> UidRange:
    first, _, last = text.partition("-")
    if not (first.strip().isdigit() and last.strip().isdigit()) or int(first) + 1 > int(last) \
            or int(first) == 0:
        raise errors.InvalidConfigError(f"SMOLBOX_JAIL_UIDS must be FIRST-LAST (FIRST > 0), "
                                        f"not {text!r}", field="SMOLBOX_JAIL_UIDS", value=text)
    return UidRange(int(first), int(last))


def support() -> dict[str, str]:
    """Which layers this host can give (layer -> 'yes' or why not), for doctor."""
    host = cgroups.detect()
    root = os.geteuid() == 0
    layers = {
        "uid": "yes" if root else "needs root",
        "namespace": "yes" if root and Path("/proc/self/ns/pid").exists() else "needs root",
        "chroot": "yes" if root else "needs root",
        "seccomp": "yes" if _seccomp_available() else "kernel has no seccomp filter",
        "cgroup": (f"v{host.version}" if host is not None and root
                   else "needs root" if host is not None else
                   "no hierarchy with memory, cpu and pids"),
        # Clones map their snapshot's RAM from a write-sealed memfd (smolbox.vmm.ramshare).
        "ram": "yes" if _sealed_memfd_available() else "kernel cannot seal a memfd",
    }
    return layers


def _sealed_memfd_available() -> bool:
    try:
        fd = os.memfd_create("smolbox-probe", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _seccomp_available() -> bool:
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False



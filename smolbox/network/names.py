"""Names of the host objects smolbox creates for networking, and their parsing.

Why a module of its own: ``reconcile`` must recognise smolbox's objects among
everything else on the host (other software's bridges, tables and TAPs) and tell
which machine each belongs to, using nothing but the names and the interface
alias. So naming and parsing live side by side, and every name is checked against
the kernel's and nft's rules *before* anything is created.

- bridge: configurable (default ``sbxbr0``), lower-case letters and digits.
- TAP: ``sbx<8 hex>``: the hex part of an engine id ``sbx-<8 hex>``, or the first
  8 hex digits of the id's SHA-256 for other ids (collisions are detected at
  creation, never silently shared: the kernel refuses an existing name).
- nft: ``smolbox_<bridge>`` (shared NAT) and ``smolbox_<bridge>_<vm id>`` (one per
  machine, in the ``bridge`` and ``inet`` families), so two smolbox installations
  using different bridges never reconcile each other's tables away.
- interface alias: ``smolbox bridge=<bridge> vm=<vm id>`` on every TAP.
"""

from __future__ import annotations

import hashlib
import re

from smolbox.errors import NetworkConfigError

__all__ = [
    "IFNAMSIZ_MAX",
    "TABLE_PREFIX",
    "TAP_PREFIX",
    "check_bridge_name",
    "check_vm_id",
    "machine_table",
    "parse_alias",
    "parse_machine_table",
    "shared_table",
    "tap_alias",
    "tap_name",
]

IFNAMSIZ_MAX = 15  # Linux interface names: 15 bytes plus the NUL
TAP_PREFIX = "sbx"
TABLE_PREFIX = "smolbox_"
ALIAS_PREFIX = "smolbox "

_BRIDGE = re.compile(r"^[a-z][a-z0-9]{0,14}$")
_VM_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ENGINE_ID = re.compile(r"^sbx-(?P<hex>[0-9a-f]{8})$")
_ALIAS = re.compile(
    r"^smolbox bridge=(?P<bridge>[a-z][a-z0-9]{0,14}) vm=(?P<vm>[a-z0-9][a-z0-9-]*)$")


def check_bridge_name(name: str, field: str = "bridge") -> str:
    """A bridge name the kernel accepts and that cannot be confused with a TAP."""
    if not _BRIDGE.match(name) or len(name) > IFNAMSIZ_MAX:
        raise NetworkConfigError(
            f"Bridge name {name!r} is not valid: use 1-15 lower-case letters and digits, "
            "starting with a letter", field=field, value=name,
        )
    if name.startswith(TAP_PREFIX) and re.fullmatch(r"sbx[0-9a-f]{8}", name):
        raise NetworkConfigError(f"Bridge name {name!r} looks like a smolbox TAP name",
                                 field=field, value=name)
    return name


def check_vm_id(vm_id: str) -> str:
    """Machine ids end up in interface aliases and nft table names: keep them plain."""
    if not isinstance(vm_id, str) or not _VM_ID.match(vm_id):
        raise NetworkConfigError(
            f"Machine id {vm_id!r} cannot name network objects: use lower-case letters, "
            "digits and '-'", field="vm_id", value=str(vm_id),
        )
    return vm_id


def tap_name(vm_id: str) -> str:
    """The TAP of a machine: ``sbx`` + 8 hex digits (11 bytes, under IFNAMSIZ)."""
    check_vm_id(vm_id)
    match = _ENGINE_ID.match(vm_id)
    digits = match["hex"] if match else hashlib.sha256(vm_id.encode()).hexdigest()[:8]
    return f"{TAP_PREFIX}{digits}"


def tap_alias(bridge: str, vm_id: str) -> str:
    return f"{ALIAS_PREFIX}bridge={bridge} vm={vm_id}"


def parse_alias(alias: str | None) -> tuple[str, str] | None:
    """``(bridge, vm_id)`` of a smolbox TAP alias, None for anything else."""
    if not alias:
        return None
    match = _ALIAS.match(alias)
    return (match["bridge"], match["vm"]) if match else None


def shared_table(bridge: str) -> str:
    return f"{TABLE_PREFIX}{bridge}"


def machine_table(bridge: str, vm_id: str) -> str:
    return f"{TABLE_PREFIX}{bridge}_{check_vm_id(vm_id)}"


def parse_machine_table(name: str, bridge: str) -> str | None:
    """The machine id behind a per-machine table of ``bridge``, None for other tables."""
    prefix = f"{TABLE_PREFIX}{bridge}_"
    if not name.startswith(prefix):
        return None
    vm_id = name[len(prefix):]
    return vm_id if _VM_ID.match(vm_id) else None

"""Exec, streaming and files over SSH for machines without the smolbox agent.

:mod:`keys` makes the per-machine login key and the guest host key (pinned, handed to
the guest through the cloud-init seed); :mod:`client` runs commands and moves files
with ``asyncssh`` behind a blocking API shaped like the agent's.
"""

from __future__ import annotations

from smolbox.ssh.client import SSHClient, SSHTarget
from smolbox.ssh.keys import MachineKeys, ensure_keys

__all__ = ["MachineKeys", "SSHClient", "SSHTarget", "ensure_keys"]

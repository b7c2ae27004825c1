"""Machines from images without the smolbox agent: pull, seed, and reach over SSH.

Why here and not in the engine: the engine boots what the catalogue holds (with the
two small hooks ``has_agent`` and the seed disk); a VMFile's ``image-url`` is pulled
before create, its ``cloud-init`` becomes a NoCloud seed carrying smolbox's login key
and the host key smolbox generated (so SSH pins it from the first connection), and
provisioners of such a machine run over SSH through the ``port`` forwarded to 22.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from smolbox import errors
from smolbox.channel.types import ExecEvent
from smolbox.engine.engine import Engine
from smolbox.images.cloudinit import SeedSpec, build_seed
from smolbox.ssh import MachineKeys, SSHClient, SSHTarget, ensure_keys
from smolbox.store.records import MachineRecord
from smolbox.vmfile.guests import AgentGuest, Guest
from smolbox.vmfile.model import MachineDecl, SSHSettings

#: cloud-init under TCG takes a while; the machine's own boot timeout if larger
SSH_READY_TIMEOUT = 300.0


def keys_folder(engine: Engine, source: str, decl: MachineDecl) -> Path:
    """Keys of one declared machine, kept across reloads (its host key stays the same)."""
    tag = hashlib.sha256(f"{source}\0{decl.name}".encode()).hexdigest()[:16]
    return engine.paths.home / "ssh" / f"{decl.name}-{tag}"


def _agentless(engine: Engine, decl: MachineDecl) -> bool:
    try:
        return engine.images.find(decl.config.image).build.get("agent") is False
    except errors.ImageNotFoundError:
        return decl.image_url is not None


def machine_keys(engine: Engine, source: str, decl: MachineDecl) -> MachineKeys:
    key = decl.ssh.private_key if decl.ssh is not None else None
    return ensure_keys(keys_folder(engine, source, decl), client_key=key)


def prepare_machine(engine: Engine, source: str, decl: MachineDecl) -> Path | None:
    """Pull the machine's image if needed; for an image without the agent, build its
    cloud-init seed (a temporary file the caller removes after create)."""
    if decl.image_url is not None and decl.image_sha256 is not None:
        from smolbox.images.pull import pull_image

        pull_image(engine.images, decl.image_url, decl.image_sha256, name=decl.config.image)
    if not _agentless(engine, decl) and decl.cloud_init is None:
        return None
    keys = machine_keys(engine, source, decl)
    cloud = decl.cloud_init
    user = (decl.ssh or SSHSettings()).user
    login = keys.client_public
    if cloud is not None and cloud.ssh_key is not None:
        login = cloud.ssh_key.read_text().strip()
    spec = SeedSpec(
        instance_id=f"{decl.name}-{hashlib.sha256(keys.host_public.encode()).hexdigest()[:8]}",
        hostname=(cloud.hostname if cloud and cloud.hostname else decl.name), user=user,
        authorized_key=login, host_key_private=keys.host_private,
        host_key_public=keys.host_public,
        user_data=cloud.user_data.read_text() if cloud and cloud.user_data else None)
    folder = Path(tempfile.mkdtemp(prefix="smolbox-seed-"))
    try:
        return build_seed(spec, folder / "seed.img", "ext4")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


class SSHGuest:
    """A provisioner's view of a machine reached over SSH."""

    def __init__(self, client: SSHClient) -> None:
        self.client = client

    def exec_stream(self, cmd: list[str] | str) -> Iterator[ExecEvent]:
        return self.client.exec_stream(cmd)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.client.write_file(path, data, mode=mode)

    def close(self) -> None:
        self.client.close()


def ssh_target(engine: Engine, source: str, decl: MachineDecl,
               record: MachineRecord) -> SSHTarget:
    """Where the machine's sshd is reachable from this host (its forwarded port)."""
    settings = decl.ssh or SSHSettings()
    forward = next((p for p in decl.config.ports if p.guest == settings.port), None)
    if forward is None:
        raise errors.CommandExecutionUnavailableError(
            record.name, "the image has no smolbox agent and no port reaches its sshd",
            remediation=f"Add `port host=<free port> guest={settings.port}` to the vm's "
                        "network block (network \"user\").")
    keys = machine_keys(engine, source, decl)
    return SSHTarget(vm_id=record.name, host=forward.host_address, port=forward.host,
                     user=settings.user, client_key=keys.client_key,
                     host_public=keys.host_public)


def foreign_guest(engine: Engine, source: str, decl: MachineDecl,
                  record: MachineRecord) -> Guest:
    """The agent for smolbox images; SSH (waiting for sshd) for the others."""
    if not _agentless(engine, decl) and decl.ssh is None:
        return AgentGuest(engine, record.id)
    client = SSHClient(ssh_target(engine, source, decl, record))
    try:
        client.wait_ready(max(SSH_READY_TIMEOUT, decl.config.timeouts.boot))
    except BaseException:
        client.close()
        raise
    return SSHGuest(client)


def forget_machine(engine: Engine, source: str, decl: MachineDecl) -> None:
    """After ``down``: the machine's keys go too."""
    shutil.rmtree(keys_folder(engine, source, decl), ignore_errors=True)

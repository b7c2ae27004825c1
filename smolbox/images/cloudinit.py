"""The cloud-init NoCloud seed smolbox builds for a foreign image.

Why smolbox writes the host key too: the guest's SSH host key is generated here and
handed to cloud-init (``ssh_keys``), so smolbox knows it before the first boot and pins
it; a host key is never learnt from the network. The seed carries ``meta-data``
(instance id, hostname) and ``user-data`` (``#cloud-config`` with the login key; the
user's own user-data, if any, follows as a second MIME part).

Two containers, for two kinds of kernel: an ISO 9660 volume ``cidata`` (pycdlib) for
images booted with a kernel that has iso9660 (a Debian cloud kernel), and an ext4
filesystem labelled ``cidata`` (``mkfs.ext4 -d``) for the smolbox minimal kernel,
which has ext4 but neither iso9660 nor vfat. cloud-init's NoCloud finds the ISO by its
label; it scans only vfat/iso9660 devices, so an image booted with the minimal kernel
mounts the ext4 ``cidata`` disk at ``/var/lib/cloud/seed/nocloud`` (NoCloud's seed
folder) before cloud-init runs.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Literal

import pycdlib

from smolbox.errors import HostToolMissingError, ImageError

SeedFormat = Literal["iso", "ext4"]
LABEL = "cidata"
EXT4_SIZE = "2M"


@dataclass(frozen=True)
class SeedSpec:
    """What goes into one machine's seed."""

    instance_id: str
    hostname: str
    user: str
    authorized_key: str
    host_key_private: str
    host_key_public: str
    user_data: str | None = None


def cloud_config(spec: SeedSpec) -> str:
    """The ``#cloud-config`` smolbox needs: hostname, the login user and key, host key."""
    config: dict[str, object] = {
        "hostname": spec.hostname,
        "ssh_pwauth": False,
        "disable_root": spec.user != "root",
        "ssh_authorized_keys": [spec.authorized_key],
        "ssh_deletekeys": True,
        # the ed25519 key below is present, so nothing is generated; other types unused
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {"ed25519_private": spec.host_key_private,
                     "ed25519_public": spec.host_key_public},
    }
    if spec.user != "root":  # root exists; for root the image's default user stays as is
        config["users"] = [{"name": spec.user, "ssh_authorized_keys": [spec.authorized_key],
                            "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/sh"}]
    # JSON is YAML: no YAML writer needed, and nothing in it needs quoting rules
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def user_data(spec: SeedSpec) -> str:
    """``user-data``: smolbox's cloud-config, plus the user's own as a second part."""
    ours = cloud_config(spec)
    if spec.user_data is None:
        return ours
    message = MIMEMultipart()
    for text in (ours, spec.user_data):
        kind = "cloud-config" if text.startswith("#cloud-config") else "x-shellscript"
        message.attach(MIMEText(text, kind, "utf-8"))
    return message.as_string()


def meta_data(spec: SeedSpec) -> str:
    return json.dumps({"instance-id": spec.instance_id, "local-hostname": spec.hostname}) + "\n"


def seed_files(spec: SeedSpec) -> dict[str, bytes]:
    return {"meta-data": meta_data(spec).encode(), "user-data": user_data(spec).encode()}


def _write_iso(files: dict[str, bytes], dest: Path) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for name, data in files.items():
            iso_name = "/" + name.upper().replace("-", "_") + ".;1"
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name,
                       joliet_path="/" + name)
        iso.write(str(dest))
    finally:
        iso.close()


def _write_ext4(files: dict[str, bytes], dest: Path) -> None:
    if shutil.which("mkfs.ext4") is None:
        raise HostToolMissingError("mkfs.ext4", "e2fsprogs")
    with tempfile.TemporaryDirectory(prefix="smolbox-seed-") as tree:
        for name, data in files.items():
            (Path(tree) / name).write_bytes(data)
        done = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", LABEL, "-d", tree, str(dest),
                               EXT4_SIZE], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageError(f"Building the cloud-init seed failed: {done.stderr.strip()}",
                         details={"stderr": done.stderr[-2000:]})


def build_seed(spec: SeedSpec, dest: Path, fmt: SeedFormat = "ext4") -> Path:
    """Write the NoCloud seed for ``spec`` to ``dest`` atomically (0600: it holds the
    guest's private host key)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.touch(mode=0o600)
        (_write_iso if fmt == "iso" else _write_ext4)(seed_files(spec), tmp)
        tmp.chmod(0o600)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest

"""The NoCloud seed: ISO (read back with pycdlib) and ext4 labelled cidata (read back
with blkid/debugfs), carrying hostname, login key and the pinned host key."""

from __future__ import annotations

import email
import io
import json
import subprocess
from pathlib import Path

import pycdlib
import pytest

from smolbox.images.cloudinit import SeedSpec, build_seed

SPEC = SeedSpec(instance_id="sbx-1", hostname="web", user="debian",
                authorized_key="ssh-ed25519 AAAAlogin smolbox",
                host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
                host_key_public="ssh-ed25519 AAAAhost")


def check(meta: bytes, user: bytes) -> None:
    assert json.loads(meta) == {"instance-id": "sbx-1", "local-hostname": "web"}
    assert user.startswith(b"#cloud-config\n")
    config = json.loads(user.split(b"\n", 1)[1])
    assert config["hostname"] == "web"
    assert config["users"][0]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAlogin smolbox"]
    assert config["ssh_keys"]["ed25519_public"] == "ssh-ed25519 AAAAhost"


def test_iso_seed(tmp_path: Path) -> None:
    seed = build_seed(SPEC, tmp_path / "seed.iso", "iso")
    assert seed.stat().st_mode & 0o777 == 0o600
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        assert iso.pvd.volume_identifier.strip() == b"cidata"
        files = {}
        for name in ("meta-data", "user-data"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue()
    finally:
        iso.close()
    check(files["meta-data"], files["user-data"])


def test_ext4_seed(tmp_path: Path) -> None:
    seed = build_seed(SPEC, tmp_path / "seed.img")
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(seed)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert label == "cidata"

    def cat(name: str) -> bytes:
        return subprocess.run(["debugfs", "-R", f"cat /{name}", str(seed)],
                              capture_output=True, check=True).stdout

    check(cat("meta-data"), cat("user-data"))


def test_user_data_is_a_second_part(tmp_path: Path) -> None:
    from smolbox.images.cloudinit import user_data

    spec = SeedSpec(**{**SPEC.__dict__, "user_data": "#cloud-config\npackages: [git]\n"})
    message = email.message_from_string(user_data(spec))
    assert message.get_content_type() == "multipart/mixed"
    parts = [(p.get_content_type(), p.get_payload(decode=True)) for p in message.get_payload()]
    assert [kind for kind, _ in parts] == ["text/cloud-config", "text/cloud-config"]
    assert parts[1][1] == b"#cloud-config\npackages: [git]\n"


@pytest.mark.parametrize("fmt", ["iso", "ext4"])
def test_seed_replaces_atomically(tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / "seed"
    build_seed(SPEC, dest, fmt)  # type: ignore[arg-type]
    build_seed(SPEC, dest, fmt)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["seed"]

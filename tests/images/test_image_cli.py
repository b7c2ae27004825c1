"""`smolbox image …` end to end through the real console script and a private home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolbox.images import InstalledImage

SMOLBOX = str(Path(sys.executable).parent / "smolbox")


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SMOLBOX_HOME": str(home), "SMOLBOX_IMAGES": str(home / "images")}
    return subprocess.run([SMOLBOX, *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.mark.vm  # needs the built default image (warm kernel/rootfs caches)
def test_cli_build_list_inspect_export_import_rm(default_image: InstalledImage,
                                                 tmp_path: Path) -> None:
    home = tmp_path / "home"
    built = _run(home, "--json", "image", "build", "--quiet")
    assert built.returncode == 0, built.stderr
    info = json.loads(built.stdout)
    # same version as the session's image unless the guest files were edited meanwhile
    name, version = info["ref"].split(":")
    assert name == "default" and built.stderr == ""

    listed = json.loads(_run(home, "--json", "image", "list").stdout)
    assert [(r["name"], r["version"]) for r in listed] == [("default", version)]

    inspected = json.loads(_run(home, "--json", "image", "inspect", "default").stdout)
    assert set(inspected["files"]) == {"vmlinux", "rootfs.ext4"}
    assert inspected["cmdline"].startswith("console=ttyS0 root=/dev/vda rw")

    archive = tmp_path / "default.tar"
    exported = json.loads(_run(home, "--json", "image", "export", "default",
                               str(archive)).stdout)
    imported = _run(home, "--json", "image", "import", str(archive), "--sha256",
                    exported["sha256"], "--name", "copy", "--quiet")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["ref"] == f"copy:{version}"

    removed = _run(home, "--json", "image", "rm", "copy")
    assert json.loads(removed.stdout) == {"removed": [f"copy:{version}"]}
    human = _run(home, "image", "list")
    assert "default" in human.stdout and "copy" not in human.stdout


def test_cli_errors_are_coded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = _run(home, "--json", "image", "inspect", "nope")
    assert missing.returncode == 3  # NotFoundError family
    assert json.loads(missing.stderr)["error"]["code"] == "IMAGE_NOT_FOUND"

    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"junk")
    wrong = _run(home, "--json", "image", "import", str(junk), "--sha256", "0" * 64)
    assert wrong.returncode == 6  # ImageError family
    assert json.loads(wrong.stderr)["error"]["code"] == "IMAGE_CHECKSUM_MISMATCH"

    human = _run(home, "image", "import", "http://127.0.0.1:9/x.tar", "--sha256", "0" * 64)
    assert human.returncode == 6 and "IMAGE_DOWNLOAD_FAILED" in human.stderr
    assert "help:" in human.stderr

"""Build small container-image archives in tests with python's tarfile.

Not a fake of anything: these are real ``docker save`` / OCI layout archives,
just tiny, so tests control whiteouts, links and damage precisely.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

Entry = tuple[str, str, bytes | str]  # (kind: file|dir|sym|link, name, data or link target)


def layer_tar(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
                tar.addfile(info)
            else:
                payload = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(payload), 0o755 if name.endswith("python3") else 0o644
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def docker_save(path: Path, layers: list[list[Entry]]) -> Path:
    """A ``docker save`` tarball: manifest.json listing ``<n>/layer.tar`` members."""
    with tarfile.open(path, "w") as tar:
        names = []
        for n, entries in enumerate(layers):
            names.append(f"{n}/layer.tar")
            _add(tar, names[-1], layer_tar(entries))
        _add(tar, "config.json", b"{}")
        _add(tar, "manifest.json", json.dumps(
            [{"Config": "config.json", "RepoTags": ["t:latest"], "Layers": names}]).encode())
    return path


def oci_layout(directory: Path, layers: list[list[Entry]], *, gzip_layers: bool = True) -> Path:
    """An OCI image layout directory with an index -> manifest -> (gzipped) layers."""
    import gzip

    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    descriptors = []
    for entries in layers:
        data = layer_tar(entries)
        if gzip_layers:
            data = gzip.compress(data, mtime=0)
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        descriptors.append({"mediaType": media, "digest": blob(data), "size": len(data)})
    config = blob(b"{}")
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": descriptors}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
        "size": len(manifest), "platform": {"os": "linux", "architecture": "amd64"}}]}
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def tar_directory(directory: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return dest


BASE: list[Entry] = [
    ("dir", "usr", b""), ("dir", "usr/bin", b""), ("sym", "bin", "usr/bin"),
    ("file", "usr/bin/python3", b"#!fake python\n"),
    ("dir", "etc", b""), ("file", "etc/gone", b"x"), ("file", "etc/keep", b"k"),
    ("dir", "opt", b""), ("dir", "opt/data", b""), ("file", "opt/data/old1", b"1"),
    ("file", "opt/data/old2", b"2"), ("sym", "sbin", "/usr/sbin"),
]
TOP: list[Entry] = [
    ("file", "etc/.wh.gone", b""),
    ("dir", "opt/data", b""), ("file", "opt/data/.wh..wh..opq", b""),
    ("file", "opt/data/new", b"n"),
    ("file", "bin/tool", b"tool"),  # through the relative /bin -> usr/bin link
    ("link", "usr/bin/tool-hard", "usr/bin/tool"),
    ("sym", "escape", "/../../../../tmp"),
    ("file", "escape/owned", b"must stay in the tree"),
]

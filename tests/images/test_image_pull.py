"""``image pull``: loopback HTTP and file URLs, raw and qcow2, and each failure's code
(corrupted/truncated download, wrong checksum, unknown format, failed conversion);
nothing is left in the catalogue's staging area on any of them."""

from __future__ import annotations

import hashlib
import http.server
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.images import ImageCatalog
from smolbox.images.pull import pull_image
from smolbox.paths import Paths


@pytest.fixture
def pull_catalog(tmp_path: Path) -> ImageCatalog:
    """A catalogue of its own; the build cache is the machine's (the kernel is there)."""
    shared = Paths.from_env()
    p = Paths(home=tmp_path / "home", images=tmp_path / "home" / "images",
              cache=shared.cache, run=tmp_path / "run")
    p.ensure(p.home, p.images)
    return ImageCatalog(p)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving ``www/``; ``/truncated/NAME`` promises the
    whole file but sends half and closes (a download cut off)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            if self.path.startswith("/truncated/"):
                data = (root / self.path.split("/", 2)[2]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ext4_disk(path: Path) -> Path:
    subprocess.run(["truncate", "-s", "8M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def qcow2_of(raw: Path, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def staging_empty(catalog: ImageCatalog) -> bool:
    staging = catalog.root / ".staging"
    return not staging.exists() or not any(staging.iterdir())


def test_pull_qcow2_over_http_converts_and_installs(
        pull_catalog: ImageCatalog, server: tuple[str, Path]) -> None:
    url, root = server
    raw = ext4_disk(root / "plain.raw")
    qcow = qcow2_of(raw, root / "disk.qcow2")
    image = pull_image(pull_catalog, f"{url}/disk.qcow2", sha(qcow),
                       name="foreign")
    assert image.ref == f"foreign:{sha(qcow)[:12]}"
    assert image.manifest.rootfs_format == "raw-disk"
    assert image.manifest.build["format"] == "qcow2"
    assert "root=/dev/vda" in image.cmdline and "init=" not in image.cmdline
    assert image.rootfs.read_bytes() == raw.read_bytes()  # converted back to the raw bytes
    again = pull_image(pull_catalog, f"{url}/disk.qcow2", sha(qcow), name="foreign")
    assert again.directory == image.directory  # already installed: a no-op
    assert staging_empty(pull_catalog)


def test_pull_raw_from_file_url(pull_catalog: ImageCatalog, tmp_path: Path) -> None:
    raw = ext4_disk(tmp_path / "disk.raw")
    image = pull_image(pull_catalog, f"file://{raw}", f"sha256:{sha(raw)}")
    assert image.name == "disk" and image.manifest.build["format"] == "raw"
    assert pull_catalog.get(image.ref).rootfs.read_bytes() == raw.read_bytes()


def test_truncated_download(pull_catalog: ImageCatalog, server: tuple[str, Path]) -> None:
    url, root = server
    raw = ext4_disk(root / "disk.raw")
    with pytest.raises(errors.ImageDownloadError) as caught:
        pull_image(pull_catalog, f"{url}/truncated/disk.raw", sha(raw))
    assert caught.value.code == "IMAGE_DOWNLOAD_FAILED"
    with pytest.raises(errors.ImageDownloadError) as missing:
        pull_image(pull_catalog, f"{url}/nope.raw", sha(raw))
    assert missing.value.details["status"] == 404
    assert staging_empty(pull_catalog) and pull_catalog.list() == []


def test_wrong_checksum(pull_catalog: ImageCatalog, server: tuple[str, Path]) -> None:
    url, root = server
    raw = ext4_disk(root / "disk.raw")
    with pytest.raises(errors.ImageChecksumMismatchError) as caught:
        pull_image(pull_catalog, f"{url}/disk.raw", "0" * 64)
    assert caught.value.code == "IMAGE_CHECKSUM_MISMATCH"
    assert caught.value.details["actual"] == sha(raw)
    assert staging_empty(pull_catalog) and pull_catalog.list() == []


def test_unknown_formats(pull_catalog: ImageCatalog, server: tuple[str, Path]) -> None:
    url, root = server
    junk = root / "junk.bin"
    junk.write_bytes(b"not a disk" * 1000)
    vmdk = root / "disk.vmdk"
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", str(ext4_disk(root / "d.raw")),
                    str(vmdk)], check=True)
    for path, reason in ((junk, "neither a partition table"), (vmdk, "'vmdk'")):
        with pytest.raises(errors.ImageFormatError) as caught:
            pull_image(pull_catalog, f"{url}/{path.name}", sha(path))
        assert caught.value.code == "IMAGE_FORMAT_UNKNOWN"
        assert reason in caught.value.message
    backed = root / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(root / "d.raw"),
                    "-F", "raw", str(backed)], check=True)
    with pytest.raises(errors.ImageFormatError) as refused:
        pull_image(pull_catalog, f"{url}/backed.qcow2", sha(backed))
    assert "backing file" in refused.value.message
    assert staging_empty(pull_catalog) and pull_catalog.list() == []


def test_conversion_failure(pull_catalog: ImageCatalog, server: tuple[str, Path]) -> None:
    url, root = server
    qcow = qcow2_of(ext4_disk(root / "d.raw"), root / "bad.qcow2")
    data = bytearray(qcow.read_bytes())
    l1_offset = struct.unpack(">Q", data[40:48])[0]
    data[l1_offset:l1_offset + 8] = struct.pack(">Q", 0x8000000000000201)  # unaligned L2
    qcow.write_bytes(bytes(data))
    with pytest.raises(errors.ImageConversionError) as caught:
        pull_image(pull_catalog, f"{url}/bad.qcow2", sha(qcow))
    assert caught.value.code == "IMAGE_CONVERSION_FAILED"
    assert "corrupt" in caught.value.details["stderr"].lower()
    assert staging_empty(pull_catalog) and pull_catalog.list() == []

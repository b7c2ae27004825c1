"""Import/export through real files, tar and a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smolbox.errors import (
    ImageChecksumMismatchError,
    ImageCorruptError,
    ImageDownloadError,
    ImageFileMissingError,
    ImageFormatError,
    ValidationError,
)
from smolbox.images import ImageCatalog, InstalledImage
from smolbox.images.transfer import export_image, import_image

MakeImage = Callable[..., InstalledImage]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_export_import_round_trip(make_image: MakeImage, catalog: ImageCatalog,
                                  tmp_path: Path) -> None:
    image = make_image("small", "v1", rootfs=b"\0" * (1 << 20) + b"end")
    archive = tmp_path / "small.tar"
    digest = export_image(catalog, "small:v1", archive)
    assert digest == _sha(archive)
    imported = import_image(catalog, archive, f"sha256:{digest}", name="copy")
    assert imported.ref == "copy:v1"
    assert imported.rootfs.read_bytes() == image.rootfs.read_bytes()
    assert catalog.get("copy").manifest.files == image.manifest.files
    assert not list((catalog.root / ".staging").iterdir())


def test_import_wrong_checksum(make_image: MakeImage, catalog: ImageCatalog,
                               tmp_path: Path) -> None:
    make_image()
    archive = tmp_path / "a.tar"
    export_image(catalog, "small", archive)
    with pytest.raises(ImageChecksumMismatchError):
        import_image(catalog, archive, "0" * 64, name="other")
    with pytest.raises(ValidationError):
        import_image(catalog, archive, "not-a-sha", name="other")
    assert [m.ref for m in catalog.list()] == ["small:v1"]


def test_import_truncated_archive_is_corrupt(make_image: MakeImage, catalog: ImageCatalog,
                                            tmp_path: Path) -> None:
    make_image(rootfs=b"R" * 300000)
    archive = tmp_path / "a.tar"
    export_image(catalog, "small", archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageCorruptError) as info:
        import_image(catalog, archive, _sha(archive), name="cut")
    assert info.value.code == "IMAGE_CORRUPT"
    assert [m.ref for m in catalog.list()] == ["small:v1"]


def test_import_archive_with_tampered_file(make_image: MakeImage, catalog: ImageCatalog,
                                           tmp_path: Path) -> None:
    """The archive checksum matches (the attacker recomputed it) but a file does not."""
    import tarfile

    make_image()
    good = tmp_path / "good.tar"
    export_image(catalog, "small", good)
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("vmlinux"):
                data = b"X" * len(data)
            import io

            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(ImageChecksumMismatchError):
        import_image(catalog, bad, _sha(bad), name="bad")


def test_import_missing_and_unknown(catalog: ImageCatalog, tmp_path: Path) -> None:
    with pytest.raises(ImageFileMissingError):
        import_image(catalog, tmp_path / "nope.tar", "0" * 64)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(ImageFormatError):
        import_image(catalog, junk, _sha(junk))


def test_import_from_url(make_image: MakeImage, catalog: ImageCatalog,
                         http_dir: tuple[str, Path]) -> None:
    base, root = http_dir
    make_image()
    digest = export_image(catalog, "small", root / "small.tar")
    imported = import_image(catalog, f"{base}/small.tar", digest, name="fromurl")
    assert imported.ref == "fromurl:v1"


def test_bad_urls(catalog: ImageCatalog, http_dir: tuple[str, Path]) -> None:
    base, _root = http_dir
    with pytest.raises(ImageDownloadError) as info:
        import_image(catalog, f"{base}/missing.tar", "0" * 64)
    assert info.value.code == "IMAGE_DOWNLOAD_FAILED" and info.value.details["status"] == 404
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImageDownloadError):
        import_image(catalog, f"http://127.0.0.1:{port}/x.tar", "0" * 64)
    with pytest.raises(ImageDownloadError):
        import_image(catalog, "ftp://127.0.0.1/x.tar", "0" * 64)
    assert catalog.list() == []

"""Container image unpacking: layer order, whiteouts, links, damage, hostile paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from imgtools_oci import BASE, TOP, docker_save, oci_layout, tar_directory

from smolbox.errors import ImageCorruptError, ImageFormatError, RootfsError
from smolbox.images.assemble import require_python
from smolbox.images.oci import unpack_container_image
from smolbox.images.rootpath import resolve_in_root


def _check_tree(tree: Path) -> None:
    assert not (tree / "etc/gone").exists(), ".wh.gone must delete the lower file"
    assert (tree / "etc/keep").read_bytes() == b"k"
    assert sorted(p.name for p in (tree / "opt/data").iterdir()) == ["new"], "opaque dir"
    assert (tree / "usr/bin/tool").read_bytes() == b"tool"
    assert (tree / "usr/bin/tool-hard").stat().st_ino == (tree / "usr/bin/tool").stat().st_ino
    assert (tree / "bin").is_symlink()
    # the hostile symlink was re-rooted: the file landed inside the tree
    assert (tree / "tmp/owned").read_bytes() == b"must stay in the tree"
    assert not list(tree.rglob(".wh.*"))
    require_python(tree)


def test_docker_save_layers_and_whiteouts(tmp_path: Path) -> None:
    archive = docker_save(tmp_path / "img.tar", [BASE, TOP])
    assert unpack_container_image(archive, tmp_path / "tree") == 2
    _check_tree(tmp_path / "tree")


def test_oci_layout_directory_and_tar(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "layout", [BASE, TOP])
    unpack_container_image(layout, tmp_path / "tree1")
    _check_tree(tmp_path / "tree1")
    archive = tar_directory(layout, tmp_path / "layout.tar")
    unpack_container_image(archive, tmp_path / "tree2")
    _check_tree(tmp_path / "tree2")


def test_truncated_docker_save_is_corrupt(tmp_path: Path) -> None:
    archive = docker_save(tmp_path / "img.tar", [BASE, TOP])
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageCorruptError) as info:
        unpack_container_image(archive, tmp_path / "tree")
    assert info.value.code == "IMAGE_CORRUPT"


def test_truncated_gzip_layer_is_corrupt(tmp_path: Path) -> None:
    import gzip
    import io

    from imgtools_oci import layer_tar

    from smolbox.errors import ImageChecksumMismatchError
    from smolbox.images.oci import apply_layer

    data = gzip.compress(layer_tar(BASE))[:-40]
    with pytest.raises(ImageCorruptError) as info:
        apply_layer(io.BytesIO(data), tmp_path / "tree", "layer0")
    assert info.value.details["layer"] == "layer0"
    # inside a layout the truncated blob no longer matches its digest
    layout = oci_layout(tmp_path / "layout", [BASE])
    blob = max((tmp_path / "layout/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:-40])
    with pytest.raises(ImageChecksumMismatchError):
        unpack_container_image(layout, tmp_path / "tree2")


def test_unknown_format(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a tar at all" * 10)
    with pytest.raises(ImageFormatError) as info:
        unpack_container_image(junk, tmp_path / "tree")
    assert info.value.code == "IMAGE_FORMAT_UNKNOWN"
    plain = tar_directory(tmp_path, tmp_path / "plain.tar")
    with pytest.raises(ImageFormatError):
        unpack_container_image(plain, tmp_path / "tree")


def test_userland_without_python_is_rootfs_error(tmp_path: Path) -> None:
    archive = docker_save(tmp_path / "img.tar", [[("dir", "etc", b""),
                                                  ("file", "etc/os-release", b"x")]])
    unpack_container_image(archive, tmp_path / "tree")
    with pytest.raises(RootfsError) as info:
        require_python(tmp_path / "tree")
    assert info.value.code == "ROOTFS_ERROR" and "python3" in info.value.message


def test_resolve_in_root_never_leaves_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "up").symlink_to("../../../..")
    (tree / "abs").symlink_to("/etc")
    (tree / "loop").symlink_to("loop")
    assert resolve_in_root(tree, "a/up/etc/passwd") == tree / "etc/passwd"
    assert resolve_in_root(tree, "abs/passwd") == tree / "etc/passwd"
    assert resolve_in_root(tree, "abs", follow_last=False) == tree / "abs"
    with pytest.raises(RootfsError):
        resolve_in_root(tree, "loop/x")


def test_tampered_blob_in_layout_is_checksum_mismatch(tmp_path: Path) -> None:
    """index.json pins the rest by digest: a swapped layer blob is caught."""
    from smolbox.errors import ImageChecksumMismatchError

    layout = oci_layout(tmp_path / "layout", [BASE], gzip_layers=False)
    blob = max((tmp_path / "layout/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF  # inside the first file's data: still a valid tar
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageChecksumMismatchError):
        unpack_container_image(layout, tmp_path / "tree")


def test_missing_kernel_source_package_is_host_tool_missing() -> None:
    from smolbox.errors import HostToolMissingError
    from smolbox.images.kernel import find_source

    with pytest.raises(HostToolMissingError) as info:
        find_source("linux-source-0.0-smolbox-absent")
    assert info.value.code == "HOST_TOOL_MISSING" and "apt-get install" in info.value.help

"""``machine.files``: move files in and out of a guest (mirrors E2B's ``sandbox.files``).

Why a separate object: files are a namespace of their own in every sandbox API
users already know (``sandbox.files.write``…); keeping them off ``Machine``
itself keeps both small. Transfers stream in chunks on both backends.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from smolbox import errors, hostfiles
from smolbox.channel.types import FileStat

if TYPE_CHECKING:
    from smolbox.sdk.backend import Backend


class Files:
    """File operations on one machine; guest paths are absolute.

    Every method raises ``VMNotFoundError`` for a deleted machine,
    ``InvalidTransitionError`` when it is not running, ``ValidationError`` for a
    relative guest path; on a remote backend also ``ConnectionError``.
    """

    def __init__(self, backend: Backend, vm_id: str) -> None:
        self._backend = backend
        self._vm = vm_id

    def write(self, path: str, data: str | bytes | BinaryIO, *, mode: int = 0o644) -> None:
        """Write a guest file atomically; ``str`` is encoded as UTF-8.

        Raises ``GuestFileError`` (e.g. the parent directory is missing).
        """
        payload = data.encode() if isinstance(data, str) else data
        self._backend.write_file(self._vm, path, payload, mode=mode)

    def read(self, path: str) -> bytes:
        """A guest file's whole content. Raises ``GuestFileNotFoundError``."""
        return b"".join(self._backend.read_file(self._vm, path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A guest file decoded (undecodable bytes replaced). Raises
        ``GuestFileNotFoundError``."""
        return self.read(path).decode(encoding, "replace")

    def read_stream(self, path: str) -> Iterator[bytes]:
        """The content in chunks as they arrive (for large files).

        Raises ``GuestFileNotFoundError`` (when iteration starts).
        """
        return self._backend.read_file(self._vm, path)

    def upload(self, local_path: str | os.PathLike[str], path: str, *,
               mode: int | None = None) -> None:
        """Copy a host file into the guest; the mode defaults to the host file's.

        Raises ``ValidationError`` (``field="local_path"``) when the host file cannot
        be read, ``GuestFileError`` on the guest side.
        """
        with hostfiles.open_source(local_path, mode, field="local_path") as (handle, chosen):
            self._backend.write_file(self._vm, path, handle, mode=chosen)

    def download(self, path: str, local_path: str | os.PathLike[str]) -> Path:
        """Copy a guest file to the host; the host file appears atomically (or not at all).

        Raises ``GuestFileNotFoundError``; ``ValidationError`` (``field="local_path"``)
        when the host path cannot be written.
        """
        return hostfiles.write_atomically(self._backend.read_file(self._vm, path), local_path,
                                          path, field="local_path")

    def list(self, path: str) -> builtins.list[FileStat]:
        """A guest directory's entries. Raises ``GuestFileNotFoundError``."""
        return self._backend.list_dir(self._vm, path)

    def stat(self, path: str) -> FileStat:
        """A guest path's type, size, mode and times. Raises ``GuestFileNotFoundError``."""
        return self._backend.stat(self._vm, path)

    def exists(self, path: str) -> bool:
        """Whether the guest path exists (never raises ``GuestFileNotFoundError``)."""
        try:
            self.stat(path)
        except errors.GuestFileNotFoundError:
            return False
        return True

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Make a guest directory (and its parents unless ``parents=False``).

        Raises ``GuestFileNotFoundError`` (missing parent, ``parents=False``).
        """
        self._backend.mkdir(self._vm, path, parents=parents)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a guest file, or a directory with ``recursive=True``.

        Raises ``GuestFileNotFoundError``, ``GuestFileError`` (non-empty directory).
        """
        self._backend.remove(self._vm, path, recursive=recursive)

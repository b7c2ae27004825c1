"""``machine.files``: move files in and out of a guest (mirrors E2B's ``sandbox.files``).

Why a separate object: files are a namespace of their own in every sandbox API
users already know (``sandbox.files.write``…); keeping them off ``Machine``
itself keeps both small. Transfers stream in chunks on both backends.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from smolbox import errors
from smolbox.channel.types import FileStat

if TYPE_CHECKING:
    from smolbox.sdk.backend import Backend


class Files:
    """File operations on one machine; guest paths are absolute."""

    def __init__(self, backend: Backend, vm_id: str) -> None:
        self._backend = backend
        self._vm = vm_id

    def write(self, path: str, data: str | bytes | BinaryIO, *, mode: int = 0o644) -> None:
        """Write a guest file atomically; ``str`` is encoded as UTF-8."""
        payload = data.encode() if isinstance(data, str) else data
        self._backend.write_file(self._vm, path, payload, mode=mode)

    def read(self, path: str) -> bytes:
        return b"".join(self._backend.read_file(self._vm, path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding, "replace")

    def read_stream(self, path: str) -> Iterator[bytes]:
        """The content in chunks as they arrive (for large files)."""
        return self._backend.read_file(self._vm, path)

    def upload(self, local_path: str | os.PathLike[str], path: str, *,
               mode: int | None = None) -> None:
        """Copy a host file into the guest; the mode defaults to the host file's."""
        try:
            fh = open(local_path, "rb")  # noqa: SIM115 - closed after the transfer
        except OSError as exc:
            raise errors.ValidationError(f"Cannot read host file {local_path}: {exc.strerror}",
                                         field="local_path", value=str(local_path)) from None
        with fh:
            if mode is None:
                mode = os.fstat(fh.fileno()).st_mode & 0o7777
            self._backend.write_file(self._vm, path, fh, mode=mode)

    def download(self, path: str, local_path: str | os.PathLike[str]) -> Path:
        """Copy a guest file to the host; the host file appears atomically (or not at all)."""
        target = Path(local_path)
        if target.is_dir():
            target = target / Path(path).name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as exc:
            raise errors.ValidationError(f"Cannot write into {target.parent}: {exc.strerror}",
                                         field="local_path", value=str(local_path)) from None
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._backend.read_file(self._vm, path):
                    out.write(chunk)
            os.replace(tmp, target)
        except OSError as exc:
            raise errors.ValidationError(f"Cannot write host file {target}: {exc.strerror}",
                                         field="local_path", value=str(local_path)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target

    def list(self, path: str) -> builtins.list[FileStat]:
        return self._backend.list_dir(self._vm, path)

    def stat(self, path: str) -> FileStat:
        return self._backend.stat(self._vm, path)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except errors.GuestFileNotFoundError:
            return False
        return True

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        self._backend.mkdir(self._vm, path, parents=parents)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._backend.remove(self._vm, path, recursive=recursive)

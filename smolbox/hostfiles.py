"""The host side of every upload and download: open a source, land a file atomically.

Why one module: the agent client, the engine and the SDK all copy host files into
guests and guest files onto the host. Each once had its own copy of "open the host
file, take its mode" and "write to a temp file next to the target, rename at the
end, clean up on any failure"; they drifted (different field names in errors, one
forgot the target-is-a-directory case). Now all three call these two functions and
differ only in where the guest bytes come from.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from smolbox import errormap, errors


@contextlib.contextmanager
def open_source(host_path: str | os.PathLike[str], mode: int | None = None, *,
                field: str = "host_path") -> Iterator[tuple[BinaryIO, int]]:
    """The host file to upload and the guest mode to give it (the host file's, unless
    ``mode`` is given); an unreadable file is a ValidationError naming ``field``."""
    try:
        handle = open(host_path, "rb")  # noqa: SIM115 - closed when the block ends
    except OSError as exc:
        raise errors.ValidationError(f"Cannot read host file {host_path}: {exc.strerror}",
                                     field=field, value=str(host_path)) from None
    with handle:
        chosen = mode if mode is not None else os.fstat(handle.fileno()).st_mode & 0o7777
        yield handle, chosen


def write_atomically(chunks: Iterable[bytes], host_path: str | os.PathLike[str],
                     guest_path: str = "", *, field: str = "host_path") -> Path:
    """Write ``chunks`` to ``host_path`` so that it appears complete or not at all.

    A directory target receives the guest file's base name. The temp file lives next
    to the target (same filesystem, so the final rename is atomic) and is removed on
    every failure, including a guest error raised by ``chunks`` mid-way.
    """
    target = Path(host_path)
    if target.is_dir() and guest_path:
        target = target / Path(guest_path).name
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".smolbox-part",
                                   dir=target.parent)
    except OSError as exc:
        raise _write_error(exc, f"Cannot write into {target.parent}", target, field,
                           host_path) from None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(exc, f"Cannot write host file {target}", target, field,
                           host_path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def _write_error(exc: OSError, what: str, target: Path, field: str,
                 host_path: str | os.PathLike[str]) -> errors.SmolboxError:
    """A full disk is the host's problem (DISK_SPACE_LOW with the free space); any
    other failure means the caller named a path it cannot write (a validation error)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errormap.translate(exc, operation="download", path=str(target))
    return errors.ValidationError(f"{what}: {exc.strerror}", field=field,
                                  value=str(host_path))

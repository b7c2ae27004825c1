"""The one place foreign exceptions become catalogue errors.

Why one place: the engine, the SDK, the server and the CLI all touch the host (files,
sockets, SQLite, memory), and a raw ``OSError: [Errno 28] No space left on device``
or ``MemoryError`` tells a user neither what failed nor what to do. Each front door
(``LocalBackend`` methods, the server's last-resort handler, the CLI's ``main``)
passes what escapes through :func:`translate`; deeper layers keep raising their own
typed errors where they know better (the store maps SQLite, ``vmm/qmp`` maps QMP).

    OSError ENOSPC / EDQUOT      -> DiskSpaceError (path, free bytes; 507)
    OSError EACCES / EPERM / EROFS -> HostError (permission)
    OSError EMFILE / ENFILE      -> HostError (open-file limit)
    OSError ENOMEM, MemoryError  -> HostError (host memory)
    other OSError                -> HostError (errno name, path)
    UnicodeError                 -> GuestProtocolError when it names the guest, else
                                    InternalError (text that is not UTF-8)

Only these families are translated: a ``TypeError`` from a wrong call is a bug in the
caller and stays what it is.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from smolbox import errors

FOREIGN = (OSError, MemoryError, UnicodeError)
T = TypeVar("T")


def free_bytes(path: str | os.PathLike[str] | None) -> int | None:
    """Free space at ``path`` (or its nearest existing parent); None when unknown."""
    if path is None:
        return None
    here = Path(path)
    for candidate in (here, *here.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def translate(exc: BaseException, *, operation: str = "", path: str | None = None
              ) -> errors.SmolboxError:
    """The catalogue error for ``exc`` (a ``SmolboxError`` is returned as it is)."""
    if isinstance(exc, errors.SmolboxError):
        return exc
    doing = f" ({operation})" if operation else ""
    if isinstance(exc, MemoryError):
        return errors.HostError(f"The host ran out of memory{doing}",
                                details={"cause": "MemoryError", "operation": operation},
                                help="Free host memory or give the machine less; "
                                     "`smolbox list` shows what is running.")
    if isinstance(exc, UnicodeError):
        return errors.InternalError(f"Text that is not valid UTF-8{doing}: {exc}",
                                    details={"cause": type(exc).__name__,
                                             "operation": operation})
    if isinstance(exc, OSError):
        return _os_error(exc, doing, operation, path)
    return errors.InternalError(f"Unexpected {type(exc).__name__}{doing}: {exc}",
                                details={"cause": type(exc).__name__, "operation": operation})


def _os_error(exc: OSError, doing: str, operation: str, path: str | None) -> errors.SmolboxError:
    where = str(exc.filename) if exc.filename else path
    code = exc.errno or 0
    name = errno.errorcode.get(code, "EUNKNOWN")
    details: dict[str, Any] = {"errno": name, "operation": operation}
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(where)
        shown = f"{free / (1 << 20):.1f} MiB free" if free is not None else "free space unknown"
        return errors.DiskSpaceError(
            f"No space left on the disk holding {where or 'smolbox data'}{doing}: {shown}",
            path=where, free_bytes=free, details=details)
    text = f"{exc.strerror or exc}{doing}" + (f": {where}" if where else "")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return errors.HostError(f"Permission denied: {text}", details={**details, "path": where},
                                help="Check the owner and mode of the path, and that "
                                     "SMOLBOX_HOME is writable by this user.")
    if code in (errno.EMFILE, errno.ENFILE):
        return errors.HostError(f"Too many open files: {text}", details=details,
                                help="Raise the open-file limit (`ulimit -n`) or run fewer "
                                     "machines per process.")
    if code == errno.ENOMEM:
        return errors.HostError(f"The host ran out of memory: {text}", details=details,
                                help="Free host memory or give machines less.")
    return errors.HostError(f"Host error {name}: {text}", details={**details, "path": where})


@contextmanager
def mapped(operation: str, path: str | None = None) -> Iterator[None]:
    """Raise foreign exceptions escaping the block as their catalogue errors."""
    try:
        yield
    except FOREIGN as exc:
        raise translate(exc, operation=operation, path=path) from exc


def translating(func: Callable[..., T]) -> Callable[..., T]:
    """Decorate a front-door method (generator methods included) with :func:`mapped`."""
    operation = func.__name__
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def stream(*args: Any, **kwargs: Any) -> Any:
            with mapped(operation):
                yield from func(*args, **kwargs)
        return stream

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> T:
        with mapped(operation):
            return func(*args, **kwargs)
    return call


def translating_methods(cls: type[T]) -> type[T]:
    """Apply :func:`translating` to every public method of ``cls``."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, translating(member))
    return cls

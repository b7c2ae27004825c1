"""Which backend a Machine uses when the caller does not pass one.

Why from the environment: the same script should run against the embedded engine
on a laptop and against a server in CI by setting ``SMOLBOX_URL`` (and
``SMOLBOX_TOKEN``), without code changes. The default local backend is one per
process (one engine, one store connection) and closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smolbox.sdk.backend import Backend

_default: Backend | None = None
_lock = threading.Lock()


def resolve_backend(backend: Backend | None = None, *, url: str | None = None,
                    token: str | None = None) -> tuple[Backend, bool]:
    """The backend to use and whether the caller owns (must close) it.

    ``backend`` if given; a new RemoteBackend for an explicit ``url`` (owned);
    otherwise the process default: remote when SMOLBOX_URL is set, else local.
    """
    if backend is not None:
        return backend, False
    if url:
        from smolbox.sdk.remote import RemoteBackend

        return RemoteBackend(url, token=token), True
    return default_backend(), False


@contextmanager
def borrowed_backend(backend: Backend | None = None, *, url: str | None = None,
                     token: str | None = None) -> Iterator[tuple[Backend, bool]]:
    """``resolve_backend`` for one call: a backend this call opened is closed after it."""
    chosen, owned = resolve_backend(backend, url=url, token=token)
    try:
        yield chosen, owned
    finally:
        if owned:
            chosen.close()


def default_backend() -> Backend:
    """The per-process backend chosen by the environment (created on first use)."""
    global _default
    with _lock:
        if _default is None:
            if os.environ.get("SMOLBOX_URL"):
                from smolbox.sdk.remote import RemoteBackend

                _default = RemoteBackend()
            else:
                from smolbox.sdk.local import LocalBackend

                _default = LocalBackend()
            atexit.register(_close_default)
        return _default


def _close_default() -> None:
    global _default
    with _lock:
        if _default is not None:
            _default.close()
            _default = None

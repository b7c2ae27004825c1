"""The SDK backend a CLI command talks to: the server in SMOLBOX_URL, else this host.

Why one helper: every SDK-based command opens and closes its backend the same
way, so ``SMOLBOX_URL=http://… smolbox snapshot list`` works like the local form.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from smolbox.sdk.backend import Backend


@contextmanager
def sdk_backend() -> Iterator[Backend]:
    backend: Backend
    if os.environ.get("SMOLBOX_URL"):
        from smolbox.sdk.remote import RemoteBackend

        backend = RemoteBackend()
    else:
        from smolbox.sdk.local import LocalBackend

        backend = LocalBackend()
    try:
        yield backend
    finally:
        backend.close()

"""The E2B front door of ``smolbox serve``: the real ``e2b`` SDK drives smolbox unmodified.

Set ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` to the server's URL and ``E2B_API_KEY``
to its token. Modules: ``sandboxes`` (control plane), ``process`` and
``filesystem`` (envd), ``connect`` (the Connect JSON wire format), ``access``
(API key, envd tokens, header/Host routing), ``envd`` (per-request context).
No VM logic lives here: every call goes to the engine through ``LocalBackend``.
"""

from __future__ import annotations

from fastapi import FastAPI

from smolbox.server.e2b import filesystem, process, sandboxes


def install(app: FastAPI) -> None:
    """Mount the control plane and envd routes at the root of ``app``."""
    for module in (sandboxes, process, filesystem):
        app.include_router(module.router)

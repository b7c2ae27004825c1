"""Failure injection for the server: an engine whose every call raises a plain bug.

Why a fake: a real engine never raises a non-catalogue exception on purpose, yet the
server must turn one into the catalogue's 500 envelope instead of a bare traceback.
"""

from __future__ import annotations

from typing import Any


class FakeExplodingEngine:
    """Enough of ``Engine`` for a server app; listing machines is a ``RuntimeError``."""

    def list_machines(self, states: Any = None) -> list[Any]:
        raise RuntimeError("fake_engine: injected bug")

    def reap_expired(self) -> list[str]:  # the server's lifetime reaper calls it
        return []

    def close(self) -> None:
        pass

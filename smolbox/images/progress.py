"""Progress reporting for long image steps, decoupled from any UI.

Why a protocol: the build code runs under the CLI (rich progress bars), under
tests (silent) and under the engine (logs). Builders only announce steps and
advance them; the caller decides how (or whether) to show that.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives step announcements from image builders."""

    def start(self, step: str, total: float | None = None) -> None:
        """A step begins; ``total`` is its expected amount of work (units are the step's)."""

    def advance(self, step: str, completed: float) -> None:
        """The step has done ``completed`` units of its ``total`` so far."""

    def finish(self, step: str, detail: str = "") -> None:
        """The step is over (successfully); ``detail`` is a short result note."""


class NullProgress:
    """Discards everything: the default for library and test callers."""

    def start(self, step: str, total: float | None = None) -> None:
        return None

    def advance(self, step: str, completed: float) -> None:
        return None

    def finish(self, step: str, detail: str = "") -> None:
        return None

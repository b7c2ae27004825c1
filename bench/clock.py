"""Timing helpers: one monotonic clock, milliseconds everywhere.

Why: every duration in the record is measured the same way (``time.perf_counter``
around the call, nothing else inside the window) and expressed in ms, so rows
and ratios can be compared directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed_ms(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn()
    return (time.perf_counter() - started) * 1000.0, value


def repeat_ms(count: int, fn: Callable[[], object]) -> list[float]:
    return [timed_ms(fn)[0] for _ in range(count)]

"""When and how long the RemoteBackend waits before trying a request again.

Why only idempotent calls: retrying ``POST /machines`` after a lost response
could create a second machine; retrying ``GET`` or ``PUT`` a file cannot do harm.
The caller marks each request; this module only decides *whether* a failure is
transient and *how long* to wait (capped exponential backoff with jitter, or the
server's ``Retry-After`` when it sends one).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings; ``RetryPolicy(max_attempts=1)`` turns retries off.

    ``sleep`` is injectable so callers (and tests) can observe the waits.
    """

    max_attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    jitter: float = 0.1
    retry_statuses: frozenset[int] = RETRY_STATUSES
    respect_retry_after: bool = True
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def should_retry_status(self, status: int, attempt: int) -> bool:
        return attempt < self.max_attempts and status in self.retry_statuses

    def can_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.respect_retry_after and retry_after:
            parsed = parse_retry_after(retry_after)
            if parsed is not None:
                return min(parsed, self.max_retry_after)
        base = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else base


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None if unreadable."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

"""Summaries of repeated measurements: median, p95, min, max, n.

Why here: every figure the suite reports goes through one function, so no metric
can slip out as a single timing or with a differently computed percentile.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    min: float
    max: float
    mean: float

    def rounded(self, ndigits: int) -> dict[str, float]:
        return {k: round(v, ndigits) for k, v in asdict(self).items()}

    def get(self, name: str) -> float:
        """``median``, ``p95``, ... by name (targets say which one they apply to)."""
        return float(getattr(self, name))


def percentile(samples: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: list[float]) -> Summary:
    if not samples:
        raise ValueError("summary of no samples")
    return Summary(n=len(samples), median=statistics.median(samples),
                   p95=percentile(samples, 95.0), min=min(samples), max=max(samples),
                   mean=statistics.fmean(samples))

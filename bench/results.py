"""The record of one run: metrics (raw samples + summary), ratios, host, load.

Why keep raw samples: the JSON is the evidence; anyone can recompute a summary,
re-plot, or compare two runs sample by sample. The Markdown table and the plot
are both rendered from this one record.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.stats import Summary, summarize


@dataclass(frozen=True)
class Target:
    """A figure from the issues to compare with (reported, never asserted)."""

    op: Literal["<=", ">="]
    value: float
    unit: str
    source: str

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def text(self) -> str:
        return f"{self.op} {self.value:g} {self.unit} ({self.source})"


@dataclass
class Metric:
    """One measured quantity: its samples, how to read it, and its target if any.

    ``derived`` turns the median into the unit people quote (MiB/s, cycles/min);
    ``target_on`` says whether the target applies to the median itself or to the
    derived figure.
    """

    key: str
    label: str
    group: str
    unit: str
    samples: list[float]
    note: str = ""
    derived_unit: str = ""
    derived_scale: float = 0.0  # derived = derived_scale / median (rates), if set
    target: Target | None = None
    target_on: Literal["median", "p95", "derived"] = "median"

    @property
    def summary(self) -> Summary:
        return summarize(self.samples)

    def derived(self) -> float | None:
        if not self.derived_scale:
            return None
        median = self.summary.median
        return self.derived_scale / median if median > 0 else None

    def target_status(self) -> str:
        if self.target is None:
            return ""
        if self.target_on == "derived":
            value = self.derived()
            if value is None:
                return ""
        else:
            value = self.summary.get(self.target_on)
        return "met" if self.target.met(value) else "missed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "label": self.label, "group": self.group, "unit": self.unit,
            "summary": self.summary.rounded(4),
            "samples": [round(s, 4) for s in self.samples], "note": self.note,
        }
        derived = self.derived()
        if derived is not None:
            out["derived"] = {"value": round(derived, 3), "unit": self.derived_unit}
        if self.target is not None:
            out["target"] = {**asdict(self.target), "applies_to": self.target_on,
                             "status": self.target_status()}
        return out


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two metrics' medians, measured in the same run."""

    key: str
    label: str
    numerator: str
    denominator: str
    meaning: str


@dataclass
class RunRecord:
    mode: str
    started_at: float = field(default_factory=time.time)
    host: dict[str, Any] = field(default_factory=dict)
    load_start: list[float] = field(default_factory=list)
    load_end: list[float] = field(default_factory=list)
    metrics: dict[str, Metric] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    leaked_qemu: list[int] = field(default_factory=list)
    cleanup_problems: list[str] = field(default_factory=list)
    error: str | None = None

    def add(self, metric: Metric) -> Metric:
        self.metrics[metric.key] = metric
        return metric

    def ratio_value(self, ratio: Ratio) -> float | None:
        num, den = self.metrics.get(ratio.numerator), self.metrics.get(ratio.denominator)
        if num is None or den is None or den.summary.median == 0:
            return None
        return num.summary.median / den.summary.median

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1, "mode": self.mode,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started_at)),
            "wall_seconds": round(self.wall_seconds, 1), "host": self.host,
            "load_average": {"start": self.load_start, "end": self.load_end},
            "metrics": [m.to_json() for m in self.metrics.values()],
            "ratios": [{**asdict(r), "value": _round(self.ratio_value(r))} for r in self.ratios],
            "facts": self.facts, "notes": self.notes, "leaked_qemu": self.leaked_qemu,
            "cleanup_problems": self.cleanup_problems, "error": self.error,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

"""A PNG of start latency distributions: every sample, not just the medians.

Why a plot: medians hide the tail (a starved boot on a loaded host); a box per
start path plus every sample as a dot shows both. The paths compared are cold
boots (plain QEMU and engine), template clones, the warm pool and forks.
"""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from bench.results import RunRecord

START_KEYS = ["plain_qemu_boot", "image_smoke_boot", "engine_cold_boot", "clone_ready",
              "clone_first_exec", "pool_first_exec", "fork_1", "fork_4", "fork_8"]


def plot_start_latency(record: RunRecord, path: Path) -> None:
    metrics = [record.metrics[k] for k in START_KEYS if k in record.metrics]
    metrics += [m for k, m in record.metrics.items()
                if k.startswith("fork_") and k not in START_KEYS]
    fig, ax = plt.subplots(figsize=(10, 0.6 * max(len(metrics), 3) + 1.8))
    if metrics:
        labels = [f"{m.label}\n(n={m.summary.n}, median {m.summary.median:.0f} ms)"
                  for m in metrics]
        ax.boxplot([m.samples for m in metrics], vert=False, showfliers=False, widths=0.5)
        jitter = random.Random(0)
        for row, metric in enumerate(metrics, start=1):
            ys = [row + jitter.uniform(-0.15, 0.15) for _ in metric.samples]
            ax.scatter(metric.samples, ys, s=10, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_yticks(range(1, len(metrics) + 1), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    accel = record.host.get("accelerator", "?")
    load = "/".join(f"{x:g}" for x in record.load_start)
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title(f"smolbox start latency — {accel}, {record.host.get('cores', '?')} cores, "
                 f"load {load} at start\n(cold boot vs template clone vs warm pool vs fork)",
                 fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

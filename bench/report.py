"""The Markdown rendering of a run record, and its copy into bench/README.md.

Why a marked block in the README: the README is where people look, so the latest
full run's table is pasted there between two markers; the prose around it (what
each figure means, how to rerun) is written by hand and never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.results import Metric, RunRecord

BEGIN = "<!-- bench:latest:begin -->"
END = "<!-- bench:latest:end -->"


def _num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _row(metric: Metric) -> str:
    s = metric.summary
    derived = metric.derived()
    derived_text = f"{_num(derived)} {metric.derived_unit}" if derived is not None else ""
    target = ""
    if metric.target is not None:
        status = metric.target_status()
        on = "" if metric.target_on == "median" else f" ({metric.target_on})"
        target = f"{metric.target.op} {metric.target.value:g} {metric.target.unit}{on}: {status}"
    cells = [metric.group, metric.label, metric.unit, _num(s.median), _num(s.p95),
             _num(s.min), _num(s.max), str(s.n), derived_text, target]
    return "| " + " | ".join(cells) + " |"


def _host_line(host: dict[str, Any]) -> str:
    if not host:
        return "Host: not recorded (the run stopped before the host was described)."
    accel = host["accelerator"] + ("" if host["kvm_usable"] else " (KVM not usable here)")
    return (f"Host: accelerator **{accel}**, {host['cores']} cores ({host['cpu_model']}), "
            f"{host['memory_gib']} GiB RAM, {host['qemu']}, host kernel {host['host_kernel']}; "
            f"image `{host['image']}` ({host['image_kernel_kind']} kernel, guest "
            f"{host['guest_kernel']}).")


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def render(record: RunRecord) -> str:
    data = record.to_json()
    lines = [
        f"Run of {data['started_at']} (`{record.mode}` mode, {data['wall_seconds']:.0f} s wall).",
        "",
        _host_line(record.host),
        f"Load average (1/5/15 min) at start {record.load_start}, at end {record.load_end} "
        f"on {record.host.get('cores', '?')} cores.",
        "",
        "| group | metric | unit | median | p95 | min | max | n | derived (from median) "
        "| target |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        *(_row(m) for m in record.metrics.values()),
        "",
        "Ratios (medians of this same run):",
        "",
        "| ratio | value | meaning |",
        "|---|---:|---|",
    ]
    for ratio in data["ratios"]:
        value = "n/a" if ratio["value"] is None else f"{ratio['value']:.2f}x"
        lines.append(f"| {ratio['label']} | {value} | {ratio['meaning']} |")
    lines += ["", "One-off and capacity figures (single values, not timings to compare):", ""]
    lines += [f"- `{key}`: {_fact(value)}" for key, value in record.facts.items()]
    if record.notes:
        lines += ["", *(f"- {note}" for note in record.notes)]
    if record.error:
        lines += ["", f"**The run stopped early:** {record.error}"]
    if record.leaked_qemu or record.cleanup_problems:
        lines += ["", f"**Cleanup problems:** leaked QEMU {record.leaked_qemu}, "
                      f"{record.cleanup_problems}"]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace the block between the markers (append one if there is none)."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{BEGIN}\n{markdown}{END}"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)

"""The bench suite runs end to end (``python -m bench --quick``) and writes its outputs.

Why a subprocess: that is the command the README gives, and it proves the suite
cleans up after itself from the outside (its own temp home, its own leak check).
No timing is asserted here — figures depend on the host and its load; only the
shape of the outputs (every metric family present, summaries consistent, valid
JSON/Markdown/PNG) and the absence of leaked QEMU processes are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPECTED_KEYS = {
    "host_true", "plain_qemu_boot", "image_smoke_boot", "engine_cold_boot", "clone_ready",
    "clone_exec_only", "clone_first_exec", "fork_1", "exec_true", "exec_1mib", "pause", "resume",
    "snapshot_save", "snapshot_restore", "create_delete_cycle", "idle_pss_clone",
    "idle_cpu_clone", "idle_pss_cold", "density_pss",
}


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_bench_writes_json_markdown_and_plot(default_image: object,
                                                   tmp_path: Path) -> None:
    readme = REPO / "bench" / "README.md"
    readme_before = readme.read_bytes() if readme.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path), "--no-readme"],
        cwd=REPO, capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["mode"] == "quick" and data["error"] is None
    assert data["leaked_qemu"] == [] and data["cleanup_problems"] == []
    assert data["host"]["accelerator"] in ("kvm", "tcg") and data["host"]["cores"] >= 1
    assert len(data["load_average"]["start"]) == 3 and len(data["load_average"]["end"]) == 3
    metrics = {m["key"]: m for m in data["metrics"]}
    assert set(metrics) >= EXPECTED_KEYS
    assert any(k.startswith("file_write_") for k in metrics)
    assert any(k.startswith("host_copy_") for k in metrics)
    for metric in metrics.values():
        summary = metric["summary"]
        assert summary["n"] == len(metric["samples"]) >= 1
        assert summary["min"] <= summary["median"] <= summary["p95"] <= summary["max"]
    assert {r["key"] for r in data["ratios"] if r["value"] is not None} >= {
        "exec_vs_host", "file_write_vs_host_copy", "plain_boot_vs_clone"}
    assert data["facts"]["max_concurrent"]["machines"] >= 1

    markdown = (tmp_path / "latest.md").read_text()
    assert "| median | p95 | min | max | n |" in markdown
    for metric in metrics.values():
        assert metric["label"] in markdown
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    after = readme.read_bytes() if readme.exists() else None
    assert after == readme_before, "a --no-readme run must not touch bench/README.md"

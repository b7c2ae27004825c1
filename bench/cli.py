"""Command line of the suite: ``python -m bench [--quick] [--out DIR] [--no-readme]``.

Why these outputs: the JSON (every raw sample) is the evidence, the Markdown table
is what people read, the PNG shows the start-latency distributions. A full run
also pastes its table into bench/README.md and keeps its plot next to it; quick
runs (tests, development) never touch tracked files unless told to.

Exit status: 0 on success, 1 if a step failed or a QEMU process leaked, 130 on
Ctrl-C/SIGTERM (everything is cleaned up in every case).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from bench import report, suite
from bench.machine_info import load_average
from bench.plot import plot_start_latency
from bench.profile import FULL, QUICK
from bench.results import RunRecord
from bench.sandbox import Sandbox, isolated_home

BENCH_DIR = Path(__file__).resolve().parent
NOTES = [
    "Figures are wall-clock times of real QEMU machines on this host; the host may be "
    "shared, so compare ratios of one run rather than absolute values across runs.",
    "Start paths compared: cold boots, template clones, the opt-in warm pool "
    "(Engine(warm_pool=K)) and forks.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="smolbox benchmark suite (real machines)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts: proves the suite works; figures not worth quoting")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results",
                        help="directory for JSON/Markdown/PNG (default: bench/results)")
    parser.add_argument("--readme", action=argparse.BooleanOptionalAction, default=None,
                        help="paste the table into bench/README.md (default: full runs only)")
    return parser.parse_args(argv)


def write_outputs(record: RunRecord, out: Path, stem: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    record.write_json(paths["json"])
    paths["md"].write_text(report.render(record))
    plot_start_latency(record, paths["png"])
    for kind, path in paths.items():
        shutil.copyfile(path, out / f"latest.{kind}")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counts = QUICK if args.quick else FULL
    record = RunRecord(mode="quick" if args.quick else "full", notes=list(NOTES))
    record.load_start = load_average()
    began = time.monotonic()
    interrupted = False
    box: Sandbox | None = None
    try:
        with isolated_home() as box:
            try:
                suite.run(record, counts, box)
            finally:
                record.wall_seconds = time.monotonic() - began
                print("cleaning up machines and snapshots...", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        record.error = record.error or "interrupted (Ctrl-C or SIGTERM); cleaned up"
    if box is not None:
        record.leaked_qemu = box.leaked
        record.cleanup_problems = box.cleanup_problems
    record.load_end = load_average()
    if not record.metrics:
        print(record.error or "no measurements", file=sys.stderr)
        return 130 if interrupted else 1
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(record.started_at)) + f"-{record.mode}"
    paths = write_outputs(record, args.out, stem)
    if args.readme if args.readme is not None else (not args.quick and not record.error):
        report.update_readme(BENCH_DIR / "README.md", report.render(record))
        shutil.copyfile(paths["png"], BENCH_DIR / "start_latency.png")
    print(report.render(record))
    print("\n".join(f"wrote {p}" for p in paths.values()), file=sys.stderr)
    if interrupted:
        return 130
    return 1 if record.error or record.leaked_qemu or record.cleanup_problems else 0

"""Boot an image N times under QEMU (TCG) and report time to SMOLBOX_READY.

Why a bench and not a test: timings depend on the machine and its load; tests
only check that readiness comes at all (within the 5 s acceptance bound). Run:

    .venv/bin/python -m bench.image_boot [--runs 5] [--image default] [--json]

The image is built (or reused from the caches) first; each run spawns a fresh
QEMU with a throwaway qcow2 overlay (the image package's smoke-boot command line,
``smolbox.images.bootcheck``), waits for the console line, kills QEMU. The full
suite (``python -m bench``) runs ``measure`` too, next to the engine's own
command line (bench/plain_qemu.py), so both baselines share one record.
"""

from __future__ import annotations

import argparse
import json

from bench.stats import summarize
from smolbox.images import ImageCatalog, InstalledImage
from smolbox.images.bootcheck import boot_until_ready
from smolbox.images.testing import ensure_default_image
from smolbox.paths import Paths


def measure(image: InstalledImage, runs: int, *, timeout: float = 30.0) -> list[float]:
    """Milliseconds from QEMU spawn to SMOLBOX_READY, one per boot."""
    return [boot_until_ready(image, timeout=timeout) * 1000.0 for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="default", help="image ref (default: default)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths = Paths.from_env()
    image = (ensure_default_image(paths) if args.image == "default"
             else ImageCatalog(paths).get(args.image))
    times = measure(image, args.runs, timeout=args.timeout)
    summary = summarize(times).rounded(1)
    result = {"image": image.ref, "kernel": image.manifest.kernel_kind, "unit": "ms",
              **summary, "all_ms": [round(t, 1) for t in times]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{image.ref} ({result['kernel']} kernel): time to SMOLBOX_READY over "
              f"{args.runs} boots: median {summary['median']} ms (p95 {summary['p95']}, "
              f"min {summary['min']}, max {summary['max']})")


if __name__ == "__main__":
    main()

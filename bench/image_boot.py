"""Boot the default image N times under QEMU (TCG) and report time to SMOLBOX_READY.

Why a bench and not a test: timings depend on the machine and its load; tests
only check that readiness comes at all (within the 5 s acceptance bound). Run:

    .venv/bin/python bench/image_boot.py [--runs 5] [--image default] [--json]

The image is built (or reused from the caches) first; each run spawns a fresh
QEMU with a throwaway qcow2 overlay, waits for the console line, kills QEMU.
"""

from __future__ import annotations

import argparse
import json
import statistics

from smolbox.images import ImageCatalog
from smolbox.images.bootcheck import boot_until_ready
from smolbox.images.testing import ensure_default_image
from smolbox.paths import Paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="default", help="image ref (default: default)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths = Paths.from_env()
    image = (ensure_default_image(paths) if args.image == "default"
             else ImageCatalog(paths).get(args.image))
    times = [boot_until_ready(image, timeout=args.timeout) for _ in range(args.runs)]
    result = {"image": image.ref, "kernel": image.manifest.kernel_kind, "runs": args.runs,
              "median_s": round(statistics.median(times), 3),
              "min_s": round(min(times), 3), "max_s": round(max(times), 3),
              "all_s": [round(t, 3) for t in times]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{image.ref} ({result['kernel']} kernel): time to SMOLBOX_READY over "
              f"{args.runs} boots: median {result['median_s']} s "
              f"(min {result['min_s']}, max {result['max_s']})")


if __name__ == "__main__":
    main()

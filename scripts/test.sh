#!/usr/bin/env bash
# README command (b): install everything, lint and type-check, run the whole test
# suite (unit tests plus real-VM tests under QEMU). Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/install.sh
.venv/bin/ruff check smolbox tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"

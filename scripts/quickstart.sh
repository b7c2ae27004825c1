#!/usr/bin/env bash
# README command (a): install everything, build the default guest image (cached
# after the first run), then boot a sandbox and print the output of a command in it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/install.sh"
"$here/.venv/bin/smolbox" doctor
"$here/.venv/bin/smolbox" image build
"$here/.venv/bin/smolbox" run -- python3 -c 'import platform; print("hello from", platform.node(), platform.release())'

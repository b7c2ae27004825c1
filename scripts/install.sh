#!/usr/bin/env bash
# Installs everything smolbox needs on a fresh Debian 12 machine (run as root):
# the Debian packages behind the engine and the image builds, and a virtualenv
# (.venv in the checkout) holding smolbox itself with its test tools.
# Safe to run again: apt and pip skip what is already there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  # the VMM and its disk tool (qemu-system-common also ships virtiofsd)
  qemu-system-x86 qemu-utils
  # guest images: root filesystem, ext4 image, minimal kernel from Debian's source
  debootstrap mmdebstrap e2fsprogs linux-source-6.1 build-essential bc flex bison
  libelf-dev libssl-dev xz-utils cpio kmod lz4
  # networking and egress policy
  nftables iproute2
  # virtualenv for the Python side, tmux for the CLI session tests
  python3-venv python3-dev tmux procps
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "smolbox: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ ! -x "$here/.venv/bin/python" ]]; then
  python3 -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install -q --upgrade pip
"$here/.venv/bin/python" -m pip install -q -e "$here[dev]"
echo "smolbox: installed into $here/.venv"

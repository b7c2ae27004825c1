"""A small agent-less guest image for the foreign-image test: Debian bookworm minbase
with openssh-server and cloud-init (from Debian packages, the project's own cached
mmdebstrap step), no smolbox agent, and a shell ``/sbin/init`` that mounts the basics,
configures slirp's fixed address, mounts the ``cidata`` seed at NoCloud's seed folder,
runs cloud-init's init stages (NoCloud only: they
set the hostname and install the login key and the host key from the seed) and then
runs sshd. Built once into the machine's build cache, keyed by its inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from smolbox.images import assemble
from smolbox.images.buildcache import ensure_built, log_path
from smolbox.images.hashing import sha256_inputs
from smolbox.images.rootfs import build_base_rootfs
from smolbox.paths import Paths

PACKAGES = ("openssh-server", "cloud-init", "isc-dhcp-client")
DISK = "disk.raw"
INIT = """\
#!/bin/sh
# PID 1 of the agent-less test image (no systemd in it)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# cloud-init's NoCloud scans only vfat/iso9660 devices for `cidata`; the smolbox kernel
# has neither, so the ext4 seed is mounted at NoCloud's seed directory instead
mkdir -p /var/lib/cloud/seed/nocloud
mount -o ro LABEL=cidata /var/lib/cloud/seed/nocloud
echo FOREIGN_CLOUD_INIT_START
cloud-init init --local
cloud-init init
mkdir -p /run/sshd
echo FOREIGN_SSHD_START
exec /usr/sbin/sshd -D -e
"""
CLOUD_CFG = """\
datasource_list: [ NoCloud, None ]
network: {config: disabled}
"""
RECIPE = 2


def build_foreign_image(paths: Paths) -> Path:
    """The raw ext4 disk (cached); its inputs are the base rootfs key, init and config."""
    build_root = paths.cache / "build"
    base = build_base_rootfs(build_root, PACKAGES)
    key = sha256_inputs({"rootfs": base.key, "init": INIT, "cfg": CLOUD_CFG,
                         "recipe": RECIPE})[:16]
    log = log_path(build_root, "foreign-test", key)

    def produce(out: Path, work: Path) -> None:
        log.write_text("")
        tree = work / "tree"
        assemble.extract_tarball(base.tarball, tree, log=log)
        init = tree / "sbin" / "init"
        init.unlink(missing_ok=True)
        init.write_text(INIT)
        init.chmod(0o755)
        (tree / "etc" / "cloud" / "cloud.cfg.d" / "99-smolbox-test.cfg").write_text(CLOUD_CFG)
        for old in (tree / "etc" / "ssh").glob("ssh_host_*"):
            old.unlink()  # cloud-init installs the host key smolbox made
        assemble.make_ext4(tree, out / DISK, log=log, free_bytes=128 << 20)
        shutil.rmtree(tree)

    return ensure_built(build_root, "foreign-test", key, produce) / DISK

"""A foreign image end to end (issue 16's third acceptance bullet): an agent-less image
with sshd and cloud-init is served from a loopback HTTP server, pulled with
``smolbox image pull --sha256``, booted from a VMFile with a NoCloud seed, provisioned
over SSH, and used over SSH with the pinned host key: exec, a file round trip and a
non-zero exit. ``exec`` through the agent says why it cannot work."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from foreign_image import build_foreign_image

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.engine.reconcile import qemu_processes_under
from smolbox.paths import Paths
from smolbox.ssh import SSHClient
from smolbox.vmfile import VMFileSession, read
from smolbox.vmfile.foreign import keys_folder, ssh_target

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def served_disk() -> Iterator[tuple[str, str]]:
    disk = build_foreign_image(Paths.from_env())
    digest = hashlib.sha256()
    with disk.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(disk.parent), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{disk.name}", digest.hexdigest()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interactive_shell(path: Path) -> None:
    """``smolbox ssh NAME`` without a command: a guest pty in a real terminal (tmux)."""
    sock = f"smolbox-vf-{os.getpid()}"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], check=True, capture_output=True,
                              text=True).stdout

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + 180  # a bound for a loaded host, not a timing assert
        while not re.search(pattern, screen := tmux("capture-pane", "-p", "-J", "-t", "s")):
            assert time.monotonic() < deadline, f"{pattern!r} never appeared:\n{screen}"
            time.sleep(0.2)

    def type_line(text: str) -> None:
        tmux("send-keys", "-t", "s", "-l", text)
        tmux("send-keys", "-t", "s", "Enter")

    bin_dir = str(Path(sys.executable).parent)
    tmux("new-session", "-d", "-s", "s", "-x", "120", "-y", "40", "env",
         f"PATH={bin_dir}:{os.environ['PATH']}", "TERM=xterm", "PS1=host$ ", "bash",
         "--norc", "--noprofile")
    try:
        type_line(f"smolbox ssh -f {path} vf-foreign; echo __done:$?")
        wait_for(r"root@foreign1")
        type_line("echo ssh-$((6*7)); tty; stty size")
        wait_for(r"ssh-42\s+/dev/pts/\d+\s+40 120")
        type_line("exit 6")
        wait_for(r"__done:6")  # the shell's exit code passes through
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], check=False, capture_output=True)


def test_foreign_image_over_ssh(engine: Engine, served_disk: tuple[str, str],
                                tmp_path: Path) -> None:
    url, sha = served_disk
    pulled = subprocess.run(
        [str(Path(sys.executable).parent / "smolbox"), "--json", "image", "pull", url,
         "--sha256", sha, "--name", "foreign-test"],
        capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["ref"] == f"foreign-test:{sha[:12]}"

    port = free_port()
    path = tmp_path / "VMFile.kdl"
    path.write_text(f"""\
vm "vf-foreign" {{
    image "foreign-test"
    memory 512
    network "user" {{ egress "off"; port host={port} guest=22 }}
    cloud-init {{ hostname "foreign1" }}
    ssh {{ user "root" }}
    provision "shell" {{ inline "hostname; echo over-ssh > /root/mark" }}
}}
""")
    lines: list[tuple[str, str, str]] = []
    session = VMFileSession(read(path), engine=engine,
                            output=lambda m, label, s, t: lines.append((label, s, t)))
    decl = session.vmfile.machines[0]
    record = None
    try:
        done = session.up()
        assert [(o.action, o.steps_run) for o in done] == [("created", [1])]
        record = engine.get("vf-foreign")
        out = "".join(t for label, s, t in lines if s == "stdout")
        assert "foreign1" in out  # hostname from the seed, output streamed over SSH
        console = "".join(engine.logs(record.id))
        assert "FOREIGN_SSHD_START" in console
        assert "Invalid cloud-config" not in console  # cloud-init accepted our seed

        with pytest.raises(errors.CommandExecutionUnavailableError) as no_agent:
            engine.exec(record.id, "true")
        assert no_agent.value.details["vm_id"] == "vf-foreign"
        assert "SSH" in no_agent.value.help

        target = ssh_target(engine, str(path.resolve()), decl, record)
        with SSHClient(target) as client:
            assert client.exec("cat /root/mark").stdout == "over-ssh\n"
            failed = client.exec("echo nope >&2; exit 5")
            assert (failed.exit_code, failed.stderr) == (5, "nope\n")
            client.write_file("/root/blob.bin", bytes(range(256)) * 64, mode=0o600)
            assert client.read_file("/root/blob.bin") == bytes(range(256)) * 64
            assert client.exec("stat -c %a /root/blob.bin").stdout == "600\n"
        smolbox = str(Path(sys.executable).parent / "smolbox")
        via_cli = subprocess.run([smolbox, "ssh", "-f", str(path), "vf-foreign", "--",
                                  "sh", "-c", "cat /etc/hostname; exit 4"],
                                 capture_output=True, text=True, timeout=300)
        assert (via_cli.returncode, via_cli.stdout) == (4, "foreign1\n"), via_cli.stderr
        if shutil.which("tmux"):
            interactive_shell(path)
        assert session.up()[0].action == "unchanged"  # no reboot, no rerun
    finally:
        session.down()
    assert engine.store.find_machine("vf-foreign") is None
    assert not keys_folder(engine, str(path.resolve()), decl).exists()
    if record is not None:
        run_root = Path(engine.layout(record.id).run_dir).parent
        assert record.id not in qemu_processes_under(run_root).values()
        assert not Path(engine.layout(record.id).machine_dir).exists()

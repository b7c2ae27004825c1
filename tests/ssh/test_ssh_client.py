"""The SSH client against a real SSH server on loopback: exec, streaming, non-zero
exit, a file round trip, and a host key that is not the pinned one (refused)."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from loopback_sshd import loopback_sshd

from smolbox import errors
from smolbox.ssh import SSHClient, SSHTarget, ensure_keys


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SSHTarget, Path]]:
    keys = ensure_keys(tmp_path / "keys")
    host_key = asyncssh.import_private_key(keys.host_private)
    with loopback_sshd(tmp_path, keys.client_public, host_key) as port:
        yield SSHTarget(vm_id="box", host="127.0.0.1", port=port, user=getpass.getuser(),
                        client_key=keys.client_key, host_public=keys.host_public), tmp_path


def test_keys_are_private_and_stable(tmp_path: Path) -> None:
    first = ensure_keys(tmp_path / "k")
    again = ensure_keys(tmp_path / "k")
    assert first == again
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    assert first.client_key.stat().st_mode & 0o777 == 0o600
    assert first.host_public.startswith("ssh-ed25519 ")


def test_exec_stream_exit_and_files(served: tuple[SSHTarget, Path]) -> None:
    target, folder = served
    with SSHClient(target) as client:
        client.wait_ready(10)
        done = client.exec("echo out; echo err >&2; exit 3")
        assert (done.stdout, done.stderr, done.exit_code) == ("out\n", "err\n", 3)
        assert client.exec(["printf", "%s", "a b"]).stdout == "a b"
        kinds = [e.kind for e in client.exec_stream("echo 1; sleep 0.2; echo 2")]
        assert kinds == ["stdout", "stdout", "exit"]
        path = str(folder / "round.bin")
        client.write_file(path, b"\x00\x01data", mode=0o640)
        assert client.read_file(path) == b"\x00\x01data"
        assert (folder / "round.bin").stat().st_mode & 0o777 == 0o640
        with pytest.raises(errors.SSHError):
            client.read_file(str(folder / "missing"))


def test_wrong_host_key_is_refused(served: tuple[SSHTarget, Path], tmp_path: Path) -> None:
    target, _ = served
    other = ensure_keys(tmp_path / "other").host_public
    with SSHClient(SSHTarget(**{**target.__dict__, "host_public": other})) as client, \
            pytest.raises(errors.SSHError) as caught:
        client.wait_ready(10)
    assert caught.value.code == "SSH_FAILED"
    assert "host key" in caught.value.details["reason"]


def test_nothing_listening(tmp_path: Path) -> None:
    keys = ensure_keys(tmp_path / "k")
    target = SSHTarget(vm_id="box", host="127.0.0.1", port=1, user="root",
                       client_key=keys.client_key, host_public=keys.host_public)
    with SSHClient(target) as client, pytest.raises(errors.SSHError) as caught:
        client.connect()
    assert caught.value.details["port"] == 1

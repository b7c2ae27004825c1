"""The E2B scenario with the real sync SDK; run by the e2b virtualenv's python.

Not a pytest module: ``tests/e2b/test_e2b_sdk.py`` runs it as a subprocess against a
real ``smolbox serve`` (E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY set). Each step
prints ``ok <step>``; the first failure raises and the exit status says so.
"""

from __future__ import annotations

import os
import sys
import time

from e2b import CommandExitException, NotFoundException, Sandbox, TimeoutException

MIB = 1 << 20


def step(name: str) -> None:
    print(f"ok {name}", flush=True)


def main() -> int:
    big = os.urandom(20 * MIB)
    sandbox = Sandbox.create(timeout=600)
    try:
        step("create")
        result = sandbox.commands.run("echo hello; echo oops >&2")
        assert result.exit_code == 0 and result.stdout == "hello\n", result
        assert result.stderr == "oops\n", result
        step("run")

        chunks: list[str] = []
        sandbox.commands.run("for i in 1 2 3; do echo line$i; sleep 0.2; done",
                             on_stdout=chunks.append)
        assert "".join(chunks) == "line1\nline2\nline3\n", chunks
        step("on_stdout")

        try:
            sandbox.commands.run("echo bad >&2; exit 3")
            raise AssertionError("no CommandExitException")
        except CommandExitException as exc:
            assert exc.exit_code == 3 and "bad" in exc.stderr, exc
        step("exit_code")

        try:
            sandbox.commands.run("sleep 120", timeout=2)
            raise AssertionError("a command outlived its timeout")
        except TimeoutException:
            pass
        deadline = time.monotonic() + 30
        while any(p.args[-1:] == ["sleep 120"] for p in sandbox.commands.list()):
            assert time.monotonic() < deadline, "the timed-out command still runs"
            time.sleep(0.2)
        step("command_timeout")

        sandbox.files.make_dir("/tmp/work")
        out = sandbox.commands.run("pwd; echo $GREETING; whoami", cwd="/tmp/work",
                                   envs={"GREETING": "hi"})
        assert out.stdout.split() == ["/tmp/work", "hi", "user"], out.stdout
        root = sandbox.commands.run("whoami; echo $HOME", user="root")
        assert root.stdout.split() == ["root", "/root"], root.stdout
        home = sandbox.commands.run("pwd")
        assert home.stdout.strip() == "/home/user", home.stdout
        step("cwd_envs_user")

        handle = sandbox.commands.run("sleep 600", background=True)
        other = Sandbox.connect(sandbox.sandbox_id)
        pids = [p.pid for p in other.commands.list()]
        assert handle.pid in pids, (handle.pid, pids)
        attached = other.commands.connect(handle.pid)
        assert attached.pid == handle.pid
        assert attached.kill() is True
        try:
            attached.wait()
            raise AssertionError("a killed command reported success")
        except CommandExitException as exc:
            assert exc.exit_code != 0
        deadline = time.monotonic() + 30
        while handle.pid in [p.pid for p in sandbox.commands.list()]:
            assert time.monotonic() < deadline, "killed process still listed"
            time.sleep(0.2)
        step("background_list_connect_kill")

        reader = sandbox.commands.run("head -n 1", background=True, stdin=True)
        sandbox.commands.send_stdin(reader.pid, "typed\n")
        assert reader.wait().stdout == "typed\n"
        streamed = sandbox.commands.run("head -n 2", background=True, stdin=True)
        sandbox.commands.stream_input(streamed.pid, ["first\n", "second\n"])
        assert streamed.wait().stdout == "first\nsecond\n"
        catting = sandbox.commands.run("cat; echo closed", background=True, stdin=True)
        sandbox.commands.send_stdin(catting.pid, b"bytes in\n")
        sandbox.commands.close_stdin(catting.pid)
        assert catting.wait().stdout == "bytes in\nclosed\n"
        step("send_stdin")

        info = sandbox.files.write("/home/user/data/hello.txt", "hello file")
        assert info.path == "/home/user/data/hello.txt", info
        assert sandbox.files.read("/home/user/data/hello.txt") == "hello file"
        assert sandbox.files.exists("data/hello.txt")
        owner = sandbox.commands.run("stat -c %U /home/user/data/hello.txt").stdout.strip()
        assert owner == "user", owner
        names = [e.name for e in sandbox.files.list("/home/user/data")]
        assert names == ["hello.txt"], names
        sandbox.files.rename("/home/user/data/hello.txt", "/home/user/data/moved.txt")
        assert not sandbox.files.exists("/home/user/data/hello.txt")
        assert sandbox.files.exists("/home/user/data/moved.txt")
        assert sandbox.files.make_dir("/home/user/data/sub") is True
        assert sandbox.files.make_dir("/home/user/data/sub") is False
        sandbox.files.remove("/home/user/data")
        assert not sandbox.files.exists("/home/user/data")
        try:
            sandbox.files.read("/home/user/missing.txt")
            raise AssertionError("reading a missing file succeeded")
        except NotFoundException:
            pass
        step("files")

        sandbox.files.write("/home/user/big.bin", big)
        back = sandbox.files.read("/home/user/big.bin", format="bytes")
        assert bytes(back) == big, len(back)
        step("files_20mib")

        before = sandbox.get_info().end_at
        sandbox.set_timeout(1200)
        after = sandbox.get_info()
        assert after.end_at > before, (before, after.end_at)
        assert after.sandbox_id == sandbox.sandbox_id and after.state == "running"
        step("set_timeout_get_info")

        sandbox.pause()
        assert sandbox.get_info().state == "paused"
        resumed = Sandbox.connect(sandbox.sandbox_id)
        assert resumed.get_info().state == "running"
        assert resumed.commands.run("echo back").stdout == "back\n"
        step("pause_connect")

        listed = [s.sandbox_id for s in Sandbox.list().next_items()]
        assert sandbox.sandbox_id in listed, listed
        step("list")
    finally:
        killed = sandbox.kill()
    assert killed is True
    try:
        Sandbox.connect(sandbox.sandbox_id)
        raise AssertionError("a killed sandbox could be connected")
    except Exception as exc:  # the SDK's not-found exception
        assert "not found" in str(exc).lower(), exc
    step("kill")
    return 0


if __name__ == "__main__":
    sys.exit(main())

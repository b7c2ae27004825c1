"""The E2B scenario with the real async SDK (``AsyncSandbox``); see sync_scenario.py."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from e2b import AsyncSandbox, CommandExitException, NotFoundException

MIB = 1 << 20


def step(name: str) -> None:
    print(f"ok {name}", flush=True)


async def main() -> int:
    big = os.urandom(20 * MIB)
    sandbox = await AsyncSandbox.create(timeout=600)
    try:
        step("create")
        result = await sandbox.commands.run("echo hello; echo oops >&2")
        assert result.exit_code == 0 and result.stdout == "hello\n", result
        assert result.stderr == "oops\n", result
        step("run")

        chunks: list[str] = []
        await sandbox.commands.run("for i in 1 2 3; do echo line$i; sleep 0.2; done",
                                   on_stdout=chunks.append)
        assert "".join(chunks) == "line1\nline2\nline3\n", chunks
        step("on_stdout")

        try:
            await sandbox.commands.run("echo bad >&2; exit 3")
            raise AssertionError("no CommandExitException")
        except CommandExitException as exc:
            assert exc.exit_code == 3 and "bad" in exc.stderr, exc
        step("exit_code")

        await sandbox.files.make_dir("/tmp/work")
        out = await sandbox.commands.run("pwd; echo $GREETING; whoami", cwd="/tmp/work",
                                         envs={"GREETING": "hi"})
        assert out.stdout.split() == ["/tmp/work", "hi", "user"], out.stdout
        root = await sandbox.commands.run("whoami", user="root")
        assert root.stdout.strip() == "root", root.stdout
        step("cwd_envs_user")

        handle = await sandbox.commands.run("sleep 600", background=True)
        other = await AsyncSandbox.connect(sandbox.sandbox_id)
        pids = [p.pid for p in await other.commands.list()]
        assert handle.pid in pids, (handle.pid, pids)
        attached = await other.commands.connect(handle.pid)
        assert attached.pid == handle.pid
        assert await attached.kill() is True
        try:
            await attached.wait()
            raise AssertionError("a killed command reported success")
        except CommandExitException as exc:
            assert exc.exit_code != 0
        deadline = time.monotonic() + 30
        while handle.pid in [p.pid for p in await sandbox.commands.list()]:
            assert time.monotonic() < deadline, "killed process still listed"
            await asyncio.sleep(0.2)
        step("background_list_connect_kill")

        reader = await sandbox.commands.run("head -n 1", background=True, stdin=True)
        await sandbox.commands.send_stdin(reader.pid, "typed\n")
        assert (await reader.wait()).stdout == "typed\n"
        step("send_stdin")

        await sandbox.files.write("/home/user/data/hello.txt", "hello file")
        assert await sandbox.files.read("/home/user/data/hello.txt") == "hello file"
        assert await sandbox.files.exists("data/hello.txt")
        names = [e.name for e in await sandbox.files.list("/home/user/data")]
        assert names == ["hello.txt"], names
        await sandbox.files.rename("/home/user/data/hello.txt", "/home/user/data/moved.txt")
        assert not await sandbox.files.exists("/home/user/data/hello.txt")
        assert await sandbox.files.make_dir("/home/user/data/sub") is True
        assert await sandbox.files.make_dir("/home/user/data/sub") is False
        await sandbox.files.remove("/home/user/data")
        assert not await sandbox.files.exists("/home/user/data")
        try:
            await sandbox.files.read("/home/user/missing.txt")
            raise AssertionError("reading a missing file succeeded")
        except NotFoundException:
            pass
        step("files")

        await sandbox.files.write("/home/user/big.bin", big)
        back = await sandbox.files.read("/home/user/big.bin", format="bytes")
        assert bytes(back) == big, len(back)
        step("files_20mib")

        before = (await sandbox.get_info()).end_at
        await sandbox.set_timeout(1200)
        after = await sandbox.get_info()
        assert after.end_at > before, (before, after.end_at)
        step("set_timeout_get_info")

        listed = [s.sandbox_id for s in await AsyncSandbox.list().next_items()]
        assert sandbox.sandbox_id in listed, listed
        step("list")
    finally:
        killed = await sandbox.kill()
    assert killed is True
    step("kill")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

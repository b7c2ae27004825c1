"""A real SSH server (asyncssh) on 127.0.0.1 for the client's tests: it authenticates
one public key, runs each command with ``/bin/sh -c`` on this host, and serves SFTP
on this host's filesystem. The host has no OpenSSH server; the guest-image test uses
the guest's real sshd."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh


async def _run(process: asyncssh.SSHServerProcess[bytes]) -> None:
    child = await asyncio.create_subprocess_shell(
        process.command or "true", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None

    async def relay(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
        while chunk := await source.read(4096):
            sink.write(chunk)

    await asyncio.gather(relay(child.stdout, process.stdout),
                         relay(child.stderr, process.stderr))
    process.exit(await child.wait())


@contextmanager
def loopback_sshd(folder: Path, authorized_public: str,
                  host_key: asyncssh.SSHKey) -> Iterator[int]:
    """Serve until the block ends; yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    (folder / "authorized_keys").write_text(authorized_public + "\n")

    async def start() -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key],
            authorized_client_keys=str(folder / "authorized_keys"),
            process_factory=_run, encoding=None, sftp_factory=True)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

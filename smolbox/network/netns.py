"""Run host-network work inside a chosen network namespace.

Why: smolbox's host side of networking (bridge, TAPs, nft tables, forwarding
sysctls, port checks) can live in the host's own namespace (the default) or in a
dedicated one (``SMOLBOX_NET_NETNS``) — which is also how the test-suite builds a
throw-away "host" that cannot disturb the real one. Rather than two code paths
(pyroute2 ``NetNS`` here, ``nsenter`` there), the work runs in a short-lived
thread that has ``setns(2)``-ed into the namespace: netlink sockets it opens,
``/proc/sys/net`` files it writes, sockets it binds and child processes it spawns
(``nft``) all belong to that namespace, and the rest of the process is untouched.
Entering a *network* namespace is allowed for one thread of a multi-threaded
process; the thread exits afterwards, so the change never leaks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from smolbox.errors import NetworkConfigError, NetworkSetupError

__all__ = ["NETNS_DIR", "check_netns_name", "run_in"]

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_netns_name(name: str) -> str:
    if not _NAME.match(name):
        raise NetworkConfigError(f"Network namespace name {name!r} is not valid",
                                 field="netns", value=name)
    return name


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_in(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` executed in ``netns`` (the caller's own namespace when None).

    The work also moves to a worker thread when the caller's thread runs an asyncio
    loop (e.g. the REST server starting its engine): pyroute2 drives its own loop on
    the calling thread and cannot while another one is running there.
    """
    if netns is None and not _event_loop_running():
        return fn()
    path = NETNS_DIR / check_netns_name(netns) if netns is not None else None
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            if path is not None:
                _setns(path)
        except OSError as err:
            outcome["error"] = NetworkSetupError(
                f"Cannot enter network namespace {netns}: {err.strerror}",
                step="enter netns", details={"netns": netns, "errno": err.errno},
            )
            return
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=body, name=f"smolbox-netns-{netns or 'host'}")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]

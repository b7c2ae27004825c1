"""The error-handling patterns of the README, runnable: python examples/error_handling.py

1. catch by class (families catch broadly: NotFoundError covers machines, snapshots,
   images and guest files; the same classes come back from a remote server);
2. branch on ``err.code`` (a stable string, e.g. from a JSON log);
3. retry transient errors (``err.retryable``) with backoff, nothing else;
4. clean up: ``with Machine.create()`` deletes the machine even when the body raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from smolbox import Machine, errors
from smolbox.sdk.backend import Backend

T = TypeVar("T")


def retry_transient(action: Callable[[], T], *, attempts: int = 4, base: float = 0.2,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``action``; retry only errors the catalogue marks retryable."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except errors.SmolboxError as err:
            if not err.retryable or attempt == attempts:
                raise
            delay = err.details.get("retry_after") or base * 2 ** (attempt - 1)
            print(f"  transient {err.code}, retrying in {delay:g}s")
            sleep(float(delay))
    raise AssertionError("unreachable")


def describe(err: errors.SmolboxError) -> str:
    """Branch on the stable code when the class is not at hand (e.g. parsed logs)."""
    match err.code:
        case "VM_NOT_FOUND":
            return f"no machine {err.details.get('vm_id')!r}; create one first"
        case "OPERATION_TIMEOUT":
            return f"too slow (limit {err.details.get('timeout_seconds')} s)"
        case "GUEST_FILE_NOT_FOUND":
            return f"missing file {err.details.get('path')}"
        case _:
            return f"{err.code}: {err.message} — {err.help}"


def demo(backend: Backend | None = None) -> list[str]:
    """Each pattern once against a real machine; returns what happened, in order."""
    seen: list[str] = []

    # 1. catch by class
    try:
        Machine.connect("does-not-exist", backend=backend)
    except errors.VMNotFoundError as err:
        seen.append(f"class: {describe(err)}")

    # 4. cleanup: the machine is deleted on the way out, even though the body raises
    machine_id = ""
    try:
        with Machine.create(backend=backend) as box:
            machine_id = box.id
            # 2. branch on code
            for attempt in (lambda: box.exec("sleep 10", timeout=1),
                            lambda: box.files.read("/etc/no-such-file")):
                try:
                    attempt()
                except errors.SmolboxError as err:
                    seen.append(f"code: {describe(err)}")
            # 3. retry transient errors (a flaky step that fails twice, then works)
            failures = iter([errors.UnavailableError("busy"),
                             errors.RateLimitedError(retry_after=0.01)])

            def flaky() -> str:
                failure = next(failures, None)
                if failure is not None:
                    raise failure
                return box.exec("echo done").stdout.strip()

            seen.append(f"retry: {retry_transient(flaky, base=0.01)}")
            raise RuntimeError("the agent's own bug")
    except RuntimeError as bug:
        seen.append(f"cleanup: body raised {bug!s}")
    try:
        Machine.connect(machine_id, backend=backend)
    except errors.NotFoundError:
        seen.append("cleanup: machine is gone")
    return seen


if __name__ == "__main__":
    for line in demo():
        print(line)

"""Run one external build step with a log file, progress and clean interruption.

Why: every build step (tar, make, mmdebstrap, mkfs) must (a) keep its full output
in a log the user can read when it fails, (b) surface as ImageBuildError naming
that log, and (c) never outlive an interrupted build: the step runs in its own
process group, which is killed if the caller is interrupted or raises.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from smolbox.errors import HostToolMissingError, ImageBuildError, ImageError

LineCallback = Callable[[int, str], None]


def run_step(
    argv: Sequence[str],
    *,
    log: Path,
    step: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: LineCallback | None = None,
    error: type[ImageError] = ImageBuildError,
) -> None:
    """Run ``argv`` appending its output to ``log``; raise ``error`` on a non-zero exit.

    ``on_line(n, line)`` is called for every output line (n counts from 1), so
    callers can drive a progress bar from the tool's own output.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log.open("a", encoding="utf-8", errors="replace") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        try:
            proc = subprocess.Popen(
                list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", start_new_session=True,
            )
        except FileNotFoundError:
            raise HostToolMissingError(argv[0]) from None
        try:
            assert proc.stdout is not None
            for count, line in enumerate(proc.stdout, start=1):
                sink.write(line)
                if on_line is not None:
                    on_line(count, line)
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    if code != 0:
        raise error(
            f"Build step '{step}' failed (exit {code}); see {log}",
            details={"step": step, "log": str(log), "exit_code": code, "argv": list(argv)},
        )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the step's whole process group (make spawns many compilers) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

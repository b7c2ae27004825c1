"""E2B SDK latency against smolbox serve: create, first command, command round trip, kill.

Run with the pinned e2b virtualenv's python (tests/e2b/e2b_harness.py makes it) and
E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY set; prints one JSON line of medians.
Not imported by the bench suite (the SDK is not a smolbox dependency).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from e2b import Sandbox


def main(rounds: int = 5, commands: int = 10) -> int:
    create, first, run, kill = [], [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sandbox = Sandbox.create(timeout=300)
        t1 = time.perf_counter()
        sandbox.commands.run("true")
        t2 = time.perf_counter()
        for _ in range(commands):
            t = time.perf_counter()
            sandbox.commands.run("echo hi")
            run.append(time.perf_counter() - t)
        t3 = time.perf_counter()
        sandbox.kill()
        kill.append(time.perf_counter() - t3)
        create.append(t1 - t0)
        first.append(t2 - t1)
    print(json.dumps({"rounds": rounds, "commands_per_round": commands,
                      "create_s": statistics.median(create),
                      "first_command_s": statistics.median(first),
                      "command_s": statistics.median(run), "kill_s": statistics.median(kill)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

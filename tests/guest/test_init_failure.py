"""PID 1 must never die silently: a failing init step is written to the console.

Inside the guest init then stays up (so the host's boot timeout shows the console
tail); outside PID 1, as here, it re-raises after logging, which is what we check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_failing_init_step_is_logged_with_its_traceback() -> None:
    script = textwrap.dedent("""
        from smolbox.guest import init

        def broken_mounts():  # failure injection: a mount step that raises
            raise OSError(19, "No such device", "/sys/fs/cgroup")

        init.mount_all = broken_mounts
        init.main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "smolbox-init: init failed" in done.stderr
    assert "No such device" in done.stderr and "broken_mounts" in done.stderr

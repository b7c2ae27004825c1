"""Refusals and expiry with the real SDK: a wrong API key, envd calls without (or with
a wrong) access token, and a sandbox created with ``timeout=3`` that must disappear.

Prints ``sandbox <id>`` and ``expired_after <seconds>`` for the test to check.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
from e2b import AuthenticationException, Sandbox, SandboxException

EXPIRY_GRACE_S = 30.0


def main() -> int:
    try:
        Sandbox.create(api_key="not-the-key")
        raise AssertionError("a wrong API key was accepted")
    except AuthenticationException:
        print("ok wrong_api_key", flush=True)

    sandbox = Sandbox.create(timeout=3)
    created = time.monotonic()
    print(f"sandbox {sandbox.sandbox_id}", flush=True)
    url = os.environ["E2B_SANDBOX_URL"]
    stat = f"{url}/filesystem.Filesystem/Stat"
    base = {"E2b-Sandbox-Id": sandbox.sandbox_id, "Content-Type": "application/json"}
    missing = httpx.post(stat, headers=base, json={"path": "/"})
    assert missing.status_code == 401 and missing.json()["code"] == "unauthenticated", \
        missing.text
    wrong = httpx.post(stat, headers={**base, "X-Access-Token": "wrong"}, json={"path": "/"})
    assert wrong.status_code == 401, wrong.text
    files = httpx.get(f"{url}/files", headers=base, params={"path": "/etc/hostname"})
    assert files.status_code == 401, files.text
    print("ok missing_envd_token", flush=True)

    while True:
        try:
            Sandbox.get_info(sandbox.sandbox_id)
        except SandboxException as exc:
            if "not found" not in str(exc).lower():
                raise
            break
        assert time.monotonic() - created < 3 + EXPIRY_GRACE_S, "the sandbox outlived timeout=3"
        time.sleep(0.25)
    print(f"expired_after {time.monotonic() - created:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

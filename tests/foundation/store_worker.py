"""A separate process that uses the store, for the cross-process writer tests.

Run as a script: ``python store_worker.py DB MODE [N]``.

- ``increment``: N read-modify-write increments of the ``counter`` machine's config,
  each inside ``Store.write()`` (BEGIN IMMEDIATE).
- ``hold``: take the write lock, print ``locked``, keep it until stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from smolbox.store import Store


def main() -> int:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    store = Store.open(path)
    try:
        if mode == "increment":
            for _ in range(int(sys.argv[3])):
                with store.write():
                    count = store.get_machine("counter").config["n"]
                    store.update_machine("counter", config={"n": count + 1})
        elif mode == "hold":
            with store.write():
                store.update_machine("counter", run_dir="held")
                print("locked", flush=True)
                sys.stdin.read()
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())

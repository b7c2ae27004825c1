"""One lifecycle operation in its own process, to be killed with SIGKILL at a random point.

Usage (by ``bench/reliability.py``): ``python -m bench.reliability_worker OP NAME``.
It opens the engine of ``$SMOLBOX_HOME`` without reconciling (reconcile is the job of
the fresh process that runs after the kill), prints ``go`` once the set-up is done,
then runs the operation. Operations and what they act on (made by the harness):

- ``create``: a template clone named NAME;
- ``template``: a create whose shape (160 MiB) has no template yet, so the whole
  template build (builder boot, snapshot, normalising helper, builder delete) runs;
- ``snapshot``: snapshot NAME of the running machine ``src``;
- ``fork``: three clones NAME-0..2 of snapshot ``base``;
- ``restore``: machine ``victim`` back to snapshot ``base``;
- ``delete``: delete machine NAME (created by the harness beforehand).
"""

from __future__ import annotations

import sys

from smolbox.config import MachineConfig
from smolbox.engine.engine import Engine

TEMPLATE_BUILD_MEMORY_MIB = 160


def main(operation: str, name: str) -> None:
    engine = Engine.open(reconcile=False)
    print("go", flush=True)
    if operation == "create":
        engine.create(MachineConfig(name=name))
    elif operation == "template":
        engine.create(MachineConfig(name=name, memory_mib=TEMPLATE_BUILD_MEMORY_MIB))
    elif operation == "snapshot":
        engine.snapshot("src", name)
    elif operation == "fork":
        engine.fork("base", 3, names=[f"{name}-{i}" for i in range(3)])
    elif operation == "restore":
        engine.restore("victim", "base")
    elif operation == "delete":
        engine.delete(name)
    else:
        raise SystemExit(f"unknown operation {operation!r}")
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

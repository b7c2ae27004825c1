"""Run one provisioning step in a machine, streaming its output with the step's name.

``file`` copies a host file or folder (its contents) to an absolute guest path;
``shell`` runs ``inline`` commands through ``/bin/sh -c`` or uploads a host ``script``
and runs it. A non-zero exit is ``PROVISION_FAILED`` with the step, exit code and the
tail of stderr; the machine is left as it is, for inspection.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable

from smolbox.errors import ProvisioningError
from smolbox.vmfile.digests import tree_entries
from smolbox.vmfile.guests import Guest
from smolbox.vmfile.model import Provisioner

#: ``(machine, step label, stream, text)``: stream "step" once as a step starts, then
#: "stdout" / "stderr" for every chunk of its output
OutputSink = Callable[[str, str, str, str], None]
STDERR_TAIL = 4000
SCRIPT_DIR = "/tmp/smolbox-provision"


def _run(guest: Guest, machine: str, step: Provisioner, cmd: list[str] | str,
         output: OutputSink) -> None:
    stderr = b""
    exit_code: int | None = None
    signal: int | None = None
    for event in guest.exec_stream(cmd):
        if event.kind == "exit":
            exit_code, signal = event.exit_code, event.signal
            continue
        if event.kind == "stderr":
            stderr = (stderr + event.data)[-STDERR_TAIL:]
        output(machine, step.label, event.kind, event.text)
    if exit_code == 0:
        return
    tail = stderr.decode("utf-8", "replace")
    if exit_code is None:
        raise ProvisioningError(vm_id=machine, step=step.index, kind=step.kind,
                                reason=f"killed by signal {signal}", stderr_tail=tail)
    raise ProvisioningError(vm_id=machine, step=step.index, kind=step.kind,
                            exit_code=exit_code, stderr_tail=tail)


def _copy(guest: Guest, machine: str, step: Provisioner, output: OutputSink) -> None:
    assert step.source is not None and step.destination is not None
    entries = tree_entries(step.source)
    targets = [(step.destination if not rel else posixpath.join(step.destination, rel), host)
               for rel, host in entries]
    folders = sorted({posixpath.dirname(t) for t, _ in targets} |
                     ({step.destination} if step.source.is_dir() else set()))
    _run(guest, machine, step, "mkdir -p -- " + " ".join(shlex.quote(f) for f in folders),
         output)
    for target, host in targets:
        guest.write_file(target, host.read_bytes(), mode=host.stat().st_mode & 0o777)
    output(machine, step.label, "stdout",
           f"copied {len(targets)} file(s) to {step.destination}\n")


def run_step(guest: Guest, machine: str, step: Provisioner, output: OutputSink) -> None:
    """Run ``step`` to completion or raise ProvisioningError."""
    if step.kind == "file":
        _copy(guest, machine, step, output)
    elif step.inline is not None:
        _run(guest, machine, step, step.inline, output)
    else:
        assert step.script is not None
        target = f"{SCRIPT_DIR}/step-{step.index}"
        _run(guest, machine, step, ["mkdir", "-p", SCRIPT_DIR], output)
        body = step.script.read_bytes()
        guest.write_file(target, body, mode=0o755)
        _run(guest, machine, step, [target] if body.startswith(b"#!") else ["/bin/sh", target],
             output)

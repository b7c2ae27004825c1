"""VMFile up / up again / reload / failing provisioner / down on real machines
(issue 16's first two acceptance bullets).

One test walks the whole life of a two-machine VMFile, because each step builds on
the machines the step before made (boots under TCG are the expensive part).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.engine.reconcile import qemu_processes_under
from smolbox.vmfile import VMFileSession, load, read

pytestmark = pytest.mark.vm

TEMPLATE = """\
vm "vf-web" {{
    memory {web_memory}
    env MODE="dev"
    provision "file" {{ source "app/"; destination "/srv/app" }}
    provision "shell" {{ inline "echo run >> /root/count; cat /srv/app/sub/b.txt; echo to-err >&2"
    }}
    provision "shell" {{ script "setup.sh" }}
}}
vm "vf-db" {{
    memory 256
    provision "shell" {{ inline "{db_inline}" }}
}}
{extra}
"""


class Output:
    """Collects the streamed provisioner output as the CLI would print it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str, str]] = []

    def __call__(self, machine: str, label: str, stream: str, text: str) -> None:
        self.lines.append((machine, label, stream, text))

    def text(self, machine: str, label: str) -> str:
        return "".join(t for m, lab, s, t in self.lines
                       if m == machine and lab == label and s != "step")


def write(folder: Path, *, web_memory: int = 256, db_inline: str = "echo db-ready",
          extra: str = "") -> Path:
    path = folder / "VMFile.kdl"
    path.write_text(TEMPLATE.format(web_memory=web_memory, db_inline=db_inline, extra=extra))
    return path


def test_vmfile_lifecycle(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "app" / "sub").mkdir(parents=True)
    (tmp_path / "app" / "a.py").write_text("print('a')\n")
    (tmp_path / "app" / "sub" / "b.txt").write_text("bee\n")
    (tmp_path / "setup.sh").write_text("#!/bin/sh\necho \"setup in $MODE\"\n")
    path = write(tmp_path)
    output = Output()
    session = VMFileSession(read(path), engine=engine, output=output)
    source = str(path.resolve())
    web = db = new_web = None
    try:
        # ---- up: both machines created and provisioned, output streamed per step
        done = {o.name: o for o in session.up()}
        assert {n: o.action for n, o in done.items()} == {"vf-web": "created",
                                                          "vf-db": "created"}
        assert done["vf-web"].steps_run == [1, 2, 3] and done["vf-db"].steps_run == [1]
        web, db = engine.get("vf-web"), engine.get("vf-db")
        assert engine.read_file(web.id, "/srv/app/a.py") == b"print('a')\n"
        assert engine.read_file(web.id, "/srv/app/sub/b.txt") == b"bee\n"
        assert output.text("vf-web", "provision 2 (shell)") == "bee\nto-err\n"
        assert output.text("vf-web", "provision 3 (shell)") == "setup in dev\n"
        assert output.text("vf-db", "provision 1 (shell)") == "db-ready\n"
        assert ("vf-web", "provision 1 (file)", "step", "provision 1 (file)\n") in output.lines

        # ---- second up: a no-op (same processes, no provisioner rerun)
        output.lines.clear()
        again = load(path, engine=engine, output=output).up()
        assert [(o.name, o.action, o.steps_run) for o in again] == [
            ("vf-web", "unchanged", []), ("vf-db", "unchanged", [])]
        assert output.lines == []
        assert (engine.get("vf-web").pid, engine.get("vf-db").pid) == (web.pid, db.pid)
        assert engine.read_file(web.id, "/root/count") == b"run\n"

        # status (through the CLI, another process): declared and in sync
        shown = subprocess.run(
            [str(Path(sys.executable).parent / "smolbox"), "--json", "status", "-f", str(path)],
            capture_output=True, text=True, timeout=300, check=True)
        status = {s["name"]: s for s in json.loads(shown.stdout)}
        assert status["vf-web"]["in_sync"] and status["vf-web"]["provisioned"] == 3
        assert status["vf-db"]["state"] == "running"

        # ---- reload after one machine's memory changed: only that one is recreated
        write(tmp_path, web_memory=384)
        session = VMFileSession(read(path), engine=engine, output=output)
        up_only = {o.name: o.action for o in session.up()}
        assert up_only == {"vf-web": "out-of-date", "vf-db": "unchanged"}
        reloaded = {o.name: o for o in session.reload()}
        assert reloaded["vf-web"].action == "recreated"
        assert reloaded["vf-db"].action == "unchanged"
        new_web = engine.get("vf-web")
        assert new_web.id != web.id and new_web.config["memory_mib"] == 384
        assert engine.get("vf-db").id == db.id and engine.get("vf-db").pid == db.pid
        assert engine.read_file(new_web.id, "/root/count") == b"run\n"  # provisioned anew

        # ---- a failing provisioner: PROVISION_FAILED with step and exit code; up stops
        write(tmp_path, web_memory=384, db_inline="echo broken >&2; exit 7",
              extra='vm "vf-late" { memory 256 }')
        session = VMFileSession(read(path), engine=engine, output=output)
        with pytest.raises(errors.ProvisioningError) as caught:
            session.up()
        err = caught.value
        assert err.code == "PROVISION_FAILED"
        assert (err.details["vm_id"], err.details["step"], err.details["kind"],
                err.details["exit_code"]) == ("vf-db", 1, "shell", 7)
        assert "broken" in err.details["stderr_tail"]
        assert engine.get("vf-db").state == "running"  # kept for inspection
        assert engine.store.find_machine("vf-late") is None  # up stopped there
        assert engine.exec("vf-db", "echo inspect").stdout == "inspect\n"
    finally:
        # ---- down: nothing left (machines, rows, declarations, processes)
        down = VMFileSession(read(path), engine=engine).down()
        assert {o.name: o.action for o in down}["vf-db"] == "deleted"
    for name in ("vf-web", "vf-db", "vf-late"):
        assert engine.store.find_machine(name) is None
    assert engine.store.list_declarations(source) == []
    assert web is not None and db is not None and new_web is not None
    made = {web.id, db.id, new_web.id}
    assert not any(Path(engine.layout(vm_id).run_dir).exists() for vm_id in made)
    run_root = Path(engine.layout(web.id).run_dir).parent
    assert made.isdisjoint(qemu_processes_under(run_root).values())

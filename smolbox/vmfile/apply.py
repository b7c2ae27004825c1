"""Bring the machines a VMFile declares in line with it: up, down, reload, provision,
status.

Why the store holds the digests: "nothing changed" must survive the CLI process, be
seen by every front door, and vanish with the machine (the declaration row is deleted
with the machine's row). ``up`` creates what is missing and runs the provisioners
whose inputs changed (from the first changed step on); a machine whose declaration
changed is only reported (``reload`` recreates it: that deletes its disk, so it is
never done implicitly). A failed step stops ``up`` with PROVISION_FAILED and keeps the
machine; the steps before it stay recorded, so the next ``up`` resumes there.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.store.records import DeclarationRecord, MachineRecord
from smolbox.store.states import MachineState
from smolbox.vmfile.digests import declaration_digest, pending_steps, step_digests
from smolbox.vmfile.guests import AgentGuest, Guest
from smolbox.vmfile.model import MachineDecl, VMFile
from smolbox.vmfile.provisioners import OutputSink, run_step

Action = Literal["created", "started", "unchanged", "provisioned", "out-of-date",
                 "recreated", "deleted", "absent"]


@dataclass
class Outcome:
    """What one command did to one machine."""

    name: str
    action: Action
    vm_id: str | None = None
    steps_run: list[int] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MachineStatus:
    """Declared vs actual for one machine (``status``)."""

    name: str
    declared: bool
    vm_id: str | None
    state: str
    in_sync: bool
    provisioned: int
    provisioners: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quiet(_machine: str, _label: str, _stream: str, _text: str) -> None:
    """Default output sink: output is dropped (the CLI passes a printing one)."""


GuestFactory = Callable[[MachineDecl, MachineRecord], Guest]
#: before create: make the image available; returns a cloud-init seed to attach, or None
Prepare = Callable[[MachineDecl], Path | None]


class Project:
    """One VMFile bound to an engine. ``Project(vmfile, engine).up()``."""

    def __init__(self, vmfile: VMFile, engine: Engine, *, output: OutputSink | None = None,
                 guest_for: GuestFactory | None = None, prepare: Prepare | None = None,
                 forget: Callable[[MachineDecl], None] | None = None) -> None:
        self.vmfile = vmfile
        self.engine = engine
        self.output: OutputSink = output or _quiet
        self.guest_for: GuestFactory = guest_for or (
            lambda _decl, record: AgentGuest(engine, record.id))
        self.prepare = prepare
        self.forget = forget
        self.source = str(vmfile.path)

    # ------------------------------------------------------------------ lookups
    def _actual(self, decl: MachineDecl) -> tuple[MachineRecord, DeclarationRecord] | None:
        """The machine this VMFile made for ``decl``, or None; a machine of that name
        that some other VMFile or a user made is a conflict, never adopted."""
        record = self.engine.store.find_machine(decl.name)
        if record is None or record.state is MachineState.DELETED:
            return None
        mine = self.engine.store.get_declaration(record.id)
        if mine is None or mine.source != self.source or mine.name != decl.name:
            raise errors.VMAlreadyExistsError(
                decl.name, help=("A machine with this name exists and was not made from this "
                                 "VMFile: remove it (`smolbox rm NAME`) or rename the vm."))
        return record, mine

    # ----------------------------------------------------------------- commands
    def up(self, names: list[str] | tuple[str, ...] = ()) -> list[Outcome]:
        """Create what is missing; run the provisioners whose inputs changed."""
        return [self._up_one(decl) for decl in self.vmfile.select(names)]

    def down(self, names: list[str] | tuple[str, ...] = ()) -> list[Outcome]:
        """Delete the declared machines (and their recorded state)."""
        done = []
        for decl in self.vmfile.select(names):
            actual = self._actual(decl)
            if actual is None:
                done.append(Outcome(decl.name, "absent"))
                continue
            self.engine.delete(actual[0].id, force=True)
            if self.forget is not None:
                self.forget(decl)
            done.append(Outcome(decl.name, "deleted", actual[0].id))
        return done

    def reload(self, names: list[str] | tuple[str, ...] = ()) -> list[Outcome]:
        """Recreate the machines whose declaration changed; bring the rest up."""
        done = []
        for decl in self.vmfile.select(names):
            actual = self._actual(decl)
            if actual is not None and actual[1].declaration_sha != declaration_digest(decl):
                self.engine.delete(actual[0].id, force=True)
                outcome = self._up_one(decl)
                outcome.action = "recreated"
                done.append(outcome)
            else:
                done.append(self._up_one(decl))
        return done

    def provision(self, names: list[str] | tuple[str, ...] = ()) -> list[Outcome]:
        """Rerun every provisioner of the (running) declared machines."""
        done = []
        for decl in self.vmfile.select(names):
            actual = self._actual(decl)
            if actual is None:
                raise errors.VMNotFoundError(
                    decl.name, help="Create it first with `smolbox up`.")
            record = self._running(actual[0])
            done.append(self._provision(decl, record, actual[1], start=0))
        return done

    def status(self, names: list[str] | tuple[str, ...] = ()) -> list[MachineStatus]:
        """Declared vs actual, plus machines this VMFile made that it no longer declares."""
        shown = []
        declared = self.vmfile.select(names)
        for decl in declared:
            actual = self._actual(decl)
            wanted = step_digests(decl)
            if actual is None:
                shown.append(MachineStatus(decl.name, True, None, "missing", False, 0,
                                           len(wanted)))
                continue
            record, mine = actual
            done = pending_steps(mine.provisioned, wanted)
            shown.append(MachineStatus(
                decl.name, True, record.id, str(record.state),
                mine.declaration_sha == declaration_digest(decl), done, len(wanted)))
        if not names:
            names_declared = {d.name for d in declared}
            for mine in self.engine.store.list_declarations(self.source):
                if mine.name not in names_declared:
                    found = self.engine.store.find_machine(mine.vm_id)
                    shown.append(MachineStatus(mine.name, False, mine.vm_id,
                                               str(found.state) if found else "missing",
                                               False, len(mine.provisioned), 0))
        return shown

    # ------------------------------------------------------------------ helpers
    def _running(self, record: MachineRecord) -> MachineRecord:
        if record.state is MachineState.STOPPED:
            return self.engine.start(record.id)
        if record.state is MachineState.PAUSED:
            return self.engine.resume(record.id)
        return record

    def _up_one(self, decl: MachineDecl) -> Outcome:
        actual = self._actual(decl)
        if actual is None:
            seed = self.prepare(decl) if self.prepare else None
            try:
                record = self.engine.create(decl.config, seed=seed)
            finally:
                if seed is not None:
                    shutil.rmtree(seed.parent, ignore_errors=True)
            mine = self.engine.store.put_declaration(DeclarationRecord(
                vm_id=record.id, source=self.source, name=decl.name,
                declaration_sha=declaration_digest(decl)))
            outcome = self._provision(decl, record, mine, start=0)
            outcome.action = "created"
            return outcome
        record, mine = actual
        if mine.declaration_sha != declaration_digest(decl):
            return Outcome(decl.name, "out-of-date", record.id,
                           note="declaration changed: run `smolbox reload` to recreate it")
        started = record.state is not MachineState.RUNNING
        record = self._running(record)
        first = pending_steps(mine.provisioned, step_digests(decl))
        if first == len(decl.provisioners):
            return Outcome(decl.name, "started" if started else "unchanged", record.id)
        return self._provision(decl, record, mine, start=first)

    def _record(self, record: MachineRecord, mine: DeclarationRecord,
                provisioned: tuple[str, ...]) -> DeclarationRecord:
        return self.engine.store.put_declaration(DeclarationRecord(
            vm_id=record.id, source=self.source, name=mine.name,
            declaration_sha=mine.declaration_sha, provisioned=provisioned))

    def _provision(self, decl: MachineDecl, record: MachineRecord, mine: DeclarationRecord,
                   *, start: int) -> Outcome:
        wanted = step_digests(decl)
        ran: list[int] = []
        if start >= len(decl.provisioners):
            self._record(record, mine, wanted)
            return Outcome(decl.name, "unchanged", record.id)
        guest = self.guest_for(decl, record)
        try:
            for index in range(start, len(decl.provisioners)):
                step = decl.provisioners[index]
                self.output(decl.name, step.label, "step", f"{step.label}\n")
                try:
                    run_step(guest, decl.name, step, self.output)
                finally:
                    # what ran before a failure stays recorded; a failed step does not
                    mine = self._record(record, mine, wanted[:index])
                ran.append(step.index)
        finally:
            guest.close()
        self._record(record, mine, wanted)
        return Outcome(decl.name, "provisioned" if ran else "unchanged", record.id, ran)

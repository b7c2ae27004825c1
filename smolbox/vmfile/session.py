"""The SDK entry point: ``smolbox.vmfile.load(path).up()``.

Why a session object: a VMFile is read once, then several commands run against one
engine that must be closed; the session opens the engine lazily (``Engine.open``,
which reconciles first like every front door) and closes it on ``close()``/``with``.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from smolbox.engine.engine import Engine
from smolbox.vmfile.apply import MachineStatus, Outcome, Project
from smolbox.vmfile.model import VMFile, load_model
from smolbox.vmfile.parse import parse_file
from smolbox.vmfile.provisioners import OutputSink


def read(path: str | Path | None = None) -> VMFile:
    """Parse and validate a VMFile (a path, a folder with ``VMFile.kdl``, or ``.``)."""
    return load_model(parse_file(path))


class VMFileSession:
    """A VMFile and the engine its commands run on."""

    def __init__(self, vmfile: VMFile, *, engine: Engine | None = None,
                 output: OutputSink | None = None) -> None:
        self.vmfile = vmfile
        self._engine = engine
        self._owns_engine = engine is None
        self.output = output

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.open()
        return self._engine

    def project(self) -> Project:
        """The VMFile's commands with the foreign-image hooks (pull, seed, SSH)."""
        from smolbox.vmfile import foreign

        engine, source = self.engine, str(self.vmfile.path)
        return Project(
            self.vmfile, engine, output=self.output,
            guest_for=lambda decl, record: foreign.foreign_guest(engine, source, decl, record),
            prepare=lambda decl: foreign.prepare_machine(engine, source, decl),
            forget=lambda decl: foreign.forget_machine(engine, source, decl))

    def up(self, *names: str) -> list[Outcome]:
        return self.project().up(names)

    def down(self, *names: str) -> list[Outcome]:
        return self.project().down(names)

    def reload(self, *names: str) -> list[Outcome]:
        return self.project().reload(names)

    def provision(self, *names: str) -> list[Outcome]:
        return self.project().provision(names)

    def status(self, *names: str) -> list[MachineStatus]:
        return self.project().status(names)

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None

    def __enter__(self) -> VMFileSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def load(path: str | Path | None = None, *, engine: Engine | None = None,
         output: OutputSink | None = None) -> VMFileSession:
    """Read a VMFile and bind it to an engine (opened on first use unless given)."""
    return VMFileSession(read(path), engine=engine, output=output)

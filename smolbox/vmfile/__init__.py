"""Declarative machines: a ``VMFile.kdl`` -> machines brought up, provisioned, reloaded.

    from smolbox import vmfile
    with vmfile.load("VMFile.kdl") as project:
        project.up()            # create what is missing, run changed provisioners
        print(project.status())
        project.down()

Modules: :mod:`parse` (KDL -> nodes, syntax diagnostics), :mod:`model` (nodes ->
validated declarations), :mod:`digests` (what changed), :mod:`provisioners` (file and
shell steps), :mod:`apply` (up/down/reload/provision/status against the engine),
:mod:`session` (the SDK entry point that opens the engine).
"""

from __future__ import annotations

from smolbox.vmfile.model import MachineDecl, Provisioner, VMFile
from smolbox.vmfile.session import VMFileSession, load, read

__all__ = ["MachineDecl", "Provisioner", "VMFile", "VMFileSession", "load", "read"]

"""Machines from images without the smolbox agent: pull the image, reach it over SSH.

Why here and not in the engine: the engine boots what the catalogue holds; a VMFile's
``image-url`` is pulled into the catalogue before create, and provisioners of a
machine declared with ``ssh`` run through :mod:`smolbox.ssh` instead of the agent.
"""

from __future__ import annotations

from smolbox import errors
from smolbox.engine.engine import Engine
from smolbox.store.records import MachineRecord
from smolbox.vmfile.guests import AgentGuest, Guest
from smolbox.vmfile.model import MachineDecl


def prepare_machine(engine: Engine, decl: MachineDecl) -> MachineDecl:
    """Make sure the machine's image is in the catalogue (pulling ``image-url``)."""
    if decl.image_url is not None and decl.image_sha256 is not None:
        from smolbox.images.pull import pull_image

        pull_image(engine.images, decl.image_url, decl.image_sha256, name=decl.config.image)
    return decl


def foreign_guest(engine: Engine, decl: MachineDecl, record: MachineRecord) -> Guest:
    """The agent for smolbox images; SSH when the VMFile declares ``ssh``."""
    if decl.ssh is None:
        return AgentGuest(engine, record.id)
    raise errors.CommandExecutionUnavailableError(
        record.name, "SSH provisioning is not wired into the VMFile path yet",
        remediation="Use a smolbox image (with the agent) for provisioned machines.")

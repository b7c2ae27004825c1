"""The manifest of an installed image: what it is, how to boot it, how to check it.

Why pydantic: manifests are read back from disk and from imported archives made
by other machines; a strict model turns any damage (bad JSON, missing field,
unknown kind) into one ImageCorruptError instead of a KeyError deep in the engine.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smolbox.errors import ImageCorruptError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
VERSION_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BASE_CMDLINE = "console=ttyS0 root=/dev/vda rw init=/sbin/smolbox-init"
# QEMU -M value the kernel needs: the minimal kernel finds virtio-mmio devices on the
# command line (acpi=off makes QEMU put them there); Debian's needs ACPI for that.
MINIMAL_MACHINE = "microvm,acpi=off,rtc=on"


class ImageFile(BaseModel):
    """One file of the image, checked by size and SHA-256 before use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ImageManifest(BaseModel):
    """``manifest.json`` of ``$SMOLBOX_IMAGES/<name>/<version>/``.

    ``kernel``/``rootfs``/``initrd`` are file names inside the version directory;
    ``files`` maps every such file name to its size and SHA-256.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    kernel: str
    kernel_kind: Literal["minimal", "debian"]
    rootfs: str
    #: ``raw-disk``: a pulled disk (maybe partitioned), booted with the root the cmdline names
    rootfs_format: Literal["raw-ext4", "raw-disk"] = "raw-ext4"
    initrd: str | None = None
    cmdline: str = Field(min_length=1)
    machine: str = MINIMAL_MACHINE
    files: dict[str, ImageFile]
    build: dict[str, Any] = Field(default_factory=dict)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, ImageFile]) -> dict[str, ImageFile]:
        for name in files:
            if not FILE_NAME.match(name):
                raise ValueError(f"file name {name!r} is not a plain file name")
        return files

    def model_post_init(self, _context: Any) -> None:
        for role, name in (("kernel", self.kernel), ("rootfs", self.rootfs),
                           ("initrd", self.initrd)):
            if name is not None and name not in self.files:
                raise ValueError(f"{role} file {name!r} is not listed in files")

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> ImageManifest:
        """Load and validate; anything unreadable as a manifest is ImageCorruptError."""
        path = directory / MANIFEST
        try:
            return cls.model_validate_json(path.read_bytes())
        except (pydantic.ValidationError, ValueError) as err:
            if isinstance(err, pydantic.ValidationError):
                first = err.errors(include_url=False)[0]
                reason = f"{'.'.join(map(str, first['loc'])) or 'manifest'}: {first['msg']}"
            else:
                reason = str(err)
            raise ImageCorruptError(
                f"Image manifest {path} is invalid: {reason}",
                details={"path": str(path)},
            ) from None

"""Guest images: minimal kernel, Debian root filesystem, catalogue with integrity checks.

The engine uses :class:`ImageCatalog` (``get`` a verified :class:`InstalledImage`
and boot its ``kernel``/``rootfs`` with its ``cmdline``); the CLI adds build,
import and export. Heavy outputs are cached in ``$SMOLBOX_CACHE/build``.
"""

from __future__ import annotations

from smolbox.images.catalog import DEFAULT_NAME, ImageCatalog, InstalledImage, parse_ref
from smolbox.images.manifest import ImageFile, ImageManifest

__all__ = ["DEFAULT_NAME", "ImageCatalog", "ImageFile", "ImageManifest", "InstalledImage",
           "parse_ref"]

"""Test support: the default image, built once per machine and reused.

Why here and not in tests/: the integrator's session fixture and the bench suite
both need it, and it must share the build cache logic exactly (same versions).
"""

from __future__ import annotations

from smolbox.images.builder import build_image
from smolbox.images.catalog import DEFAULT_NAME, ImageCatalog, InstalledImage
from smolbox.paths import Paths


def ensure_default_image(paths: Paths) -> InstalledImage:
    """Install (or reuse) the default image in ``paths.images``.

    Cold: kernel (~5 min) + debootstrap (~1 min) + assembly. Warm caches: the
    assembly only (~2 s) into a fresh catalogue, or a lookup when installed.
    """
    paths.ensure(paths.images, paths.cache)
    return build_image(ImageCatalog(paths), name=DEFAULT_NAME)

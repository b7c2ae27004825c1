"""SHA-256 helpers: file digests and stable digests of build inputs.

Why separate: the catalogue, the cache keys and the OCI importer all hash things,
and they must agree byte for byte (a cache key that drifts rebuilds a kernel).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (rootfs files are ~1 GiB sparse)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_inputs(inputs: Any) -> str:
    """Hex SHA-256 of JSON-serialisable inputs, canonicalised (sorted keys, no spaces)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()

"""Read the host's apt sources, so the guest rootfs uses the host's mirror.

Why: the project's machines may only reach a configured mirror; the rootfs build
must use whatever the host uses, never a hard-coded host name. Both formats are
read: one-line ``sources.list`` and deb822 ``*.sources`` (``Enabled: no`` and
``Types`` other than ``deb`` are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smolbox.errors import RootfsError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line: a mirror URI, one suite, its components."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        """The one-line form mmdebstrap accepts as a mirror argument."""
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


def _one_line(text: str) -> list[AptSource]:
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # options like [signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3:
            found.append(AptSource(words[0], words[1], tuple(words[2:])))
    return found


def _deb822(text: str) -> list[AptSource]:
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append(AptSource(uri, suite, components))
    return found


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every enabled ``deb`` source configured on the host, in apt's reading order."""
    found: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        found += _one_line(main.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                found += _one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                found += _deb822(path.read_text(errors="replace"))
    return found


def sources_for(suite: str, apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Sources for ``suite`` and its ``-updates``/``-security`` companions.

    Only the ``main`` component is kept: the guest needs nothing else, and it keeps
    the rootfs cache key independent of the host's extra components.
    """
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    chosen = [AptSource(s.uri, s.suite, ("main",))
              for s in host_sources(apt_dir) if s.suite in wanted and "main" in s.components]
    if not any(s.suite == suite for s in chosen):
        raise RootfsError(
            f"The host's apt sources have no '{suite} main' entry to build the guest from",
            details={"apt_dir": str(apt_dir), "suite": suite},
            help=f"Add a Debian mirror for '{suite}' to /etc/apt/sources.list(.d).",
        )
    unique: list[AptSource] = []
    for source in chosen:
        if source not in unique:
            unique.append(source)
    return unique

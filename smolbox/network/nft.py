"""Talking to nftables through the ``nft`` binary.

Why the binary and ``nft -f -`` rather than the python ``nftables`` bindings:
Debian ships the bindings only as python3-nftables for the *system* interpreter
(they are not importable from smolbox's virtualenv, and not on PyPI), whereas the
``nft`` binary from the nftables package is always there where nftables is. Fed a
whole ruleset on stdin, ``nft -f -`` commits it as ONE kernel transaction — the
atomicity the egress policy relies on — and its error text names the offending
line, which goes into :class:`FirewallError` details.

The process inherits the calling thread's network namespace, so running inside
:func:`smolbox.network.netns.run_in` targets that namespace.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from smolbox.errors import FirewallError

__all__ = ["Nft", "NftTable"]

NFT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str


class Nft:
    """A thin, typed wrapper over one ``nft`` binary."""

    def __init__(self, binary: str = "nft") -> None:
        self.binary = binary

    def _run(self, args: list[str], step: str, stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(
                [self.binary, *args], input=stdin, capture_output=True, text=True,
                timeout=NFT_TIMEOUT_S, check=False,
            )
        except FileNotFoundError:
            raise FirewallError(
                f"{step}: the nft binary {self.binary!r} was not found", step=step,
                help="Install nftables (`apt-get install nftables`) or set SMOLBOX_NFT.",
            ) from None
        except (OSError, subprocess.SubprocessError) as err:
            raise FirewallError(f"{step}: running nft failed: {err}", step=step) from None
        if proc.returncode != 0:
            raise FirewallError(
                f"{step}: nft rejected the request: {proc.stderr.strip()[:500]}", step=step,
                details={"exit_code": proc.returncode, "stderr": proc.stderr[-4000:],
                         "ruleset": (stdin or "")[:8000]},
            )
        return proc.stdout

    def apply(self, ruleset: str, step: str) -> None:
        """Commit ``ruleset`` as one atomic transaction (all of it or nothing)."""
        self._run(["-f", "-"], step, stdin=ruleset)

    def tables(self, step: str = "list nft tables") -> list[NftTable]:
        out = self._run(["-j", "list", "tables"], step)
        try:
            items = json.loads(out).get("nftables", [])
        except ValueError as err:
            raise FirewallError(f"{step}: unreadable nft output: {err}", step=step) from None
        return [NftTable(str(i["table"]["family"]), str(i["table"]["name"]))
                for i in items if isinstance(i, dict) and "table" in i]

    def ruleset(self, family: str, table: str) -> str:
        """The installed text of one table (for diagnostics and tests)."""
        return self._run(["list", "table", family, table], f"list table {family} {table}")

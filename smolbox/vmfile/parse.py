"""Read a ``VMFile.kdl`` into plain nodes, with diagnostics a person can act on.

Why a separate step: syntax errors and meaning errors are different mistakes. Here a
file that is not KDL becomes ``VMFILE_PARSE_FAILED`` naming ``file:line:column`` with
the offending line and a caret under the fault; :mod:`smolbox.vmfile.model` then
checks what the nodes mean.

Why two libraries: ``ckdl`` (C back-end, KDL 2.0 and 1.0) decides what is valid and
builds the nodes, so ``{ egress "open"; port host=8080 guest=8000 }`` on one line is
accepted; but its errors carry no position. When it rejects a file, ``kdl-py`` (KDL
1.0, positions on every error) locates the fault; a ``}`` that only KDL 1.0 rejects
("junk before terminator") is skipped over so the first real fault is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ckdl
from kdl import errors as kdl_errors
from kdl import parsing as kdl_parsing

from smolbox.errors import VMFileNotFoundError, VMFileParseError

DEFAULT_NAME = "VMFile.kdl"


@dataclass(frozen=True)
class Node:
    """One KDL node, independent of the parser library."""

    name: str
    args: tuple[Any, ...] = ()
    props: dict[str, Any] = field(default_factory=dict)
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class ParsedFile:
    """A parsed VMFile: its absolute path (relative paths resolve against its folder)."""

    path: Path
    nodes: tuple[Node, ...]

    @property
    def directory(self) -> Path:
        return self.path.parent


def locate(path: str | Path | None = None, *, cwd: Path | None = None) -> Path:
    """The VMFile to use: ``path`` (a file, or a folder holding ``VMFile.kdl``) or
    ``VMFile.kdl`` in ``cwd``; absolute, so the store can key declarations by it."""
    base = cwd or Path.cwd()
    candidate = base / DEFAULT_NAME if path is None else base / Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / DEFAULT_NAME
    if not candidate.is_file():
        raise VMFileNotFoundError(path=str(candidate))
    return candidate.resolve()


def snippet(text: str, line: int, column: int) -> str:
    """The line ``line`` (1-based) with a caret under ``column`` (1-based)."""
    lines = text.splitlines() or [""]
    shown = lines[min(max(line, 1), len(lines)) - 1].expandtabs(1)
    gutter = f"{line:>4} | "
    return f"{gutter}{shown}\n{' ' * (len(gutter) + max(column, 1) - 1)}^"


def _plain(value: Any) -> Any:
    """A ckdl value with a type annotation (``(u8)5``) becomes its bare value."""
    return value.value if isinstance(value, ckdl.Value) else value


def _convert(node: ckdl.Node) -> Node:
    return Node(name=str(node.name), args=tuple(_plain(a) for a in node.args),
                props={str(k): _plain(v) for k, v in node.properties.items()},
                nodes=tuple(_convert(c) for c in node.children))


def locate_fault(text: str) -> tuple[int, int, str]:
    """Line, column (1-based) and reason of the first syntax fault, found with kdl-py."""
    lines = text.split("\n")
    for _ in range(1000):  # each pass skips one KDL-1-only complaint
        try:
            kdl_parsing.Parser().parse("\n".join(lines))
        except kdl_errors.ParseError as err:
            line, column = int(err.line), int(err.col)
            reason = str(err.msg).split("parse error:", 1)[-1].strip() or "syntax error"
            row = lines[line - 1] if 0 < line <= len(lines) else ""
            if reason.startswith("Junk after node") and row[column - 1:column] == "}":
                lines[line - 1] = row[:column - 1] + ";" + row[column - 1:]
                continue
            # columns in later passes are shifted by the ';' inserted on that line
            original = text.split("\n")[line - 1] if 0 < line <= len(lines) else ""
            return line, max(1, column - (len(row) - len(original))), reason
        break
    return 1, 1, "not valid KDL"


def parse_text(text: str, path: Path) -> ParsedFile:
    """Parse ``text`` as the contents of ``path``."""
    try:
        document = ckdl.parse(text, version="any")
    except ckdl.ParseError as err:
        line, column, reason = locate_fault(text)
        if reason == "not valid KDL" and err.args:
            reason = str(err.args[0])
        shown = snippet(text, line, column)
        raise VMFileParseError(
            message=f"{path.name}:{line}:{column}: {reason}\n{shown}",
            path=str(path), line=line, column=column, reason=reason, snippet=shown,
        ) from None
    return ParsedFile(path=path, nodes=tuple(_convert(n) for n in document.nodes))


def parse_file(path: str | Path | None = None, *, cwd: Path | None = None) -> ParsedFile:
    """Locate and parse a VMFile (``VMFILE_NOT_FOUND`` / ``VMFILE_PARSE_FAILED``)."""
    located = locate(path, cwd=cwd)
    try:
        text = located.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise VMFileParseError(f"Cannot read {located}: {err}", path=str(located),
                               reason=str(err)) from None
    return parse_text(text, located)

"""Rendering shared by every CLI command: tables/JSON for results, diagnostics for errors.

Errors look like miette diagnostics: the code, the message, the details that matter
and a help line, so a person (or an agent reading stderr) knows what to do next.
With ``--json`` the same information is one JSON object on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from smolbox import errors

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes by error family; documented in README ("Exit codes"). `smolbox exec`
# passes the guest command's own exit code through instead.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_EXIT_BY_FAMILY: list[tuple[type[errors.SmolboxError], int]] = [
    (errors.ValidationError, 2),
    (errors.NotFoundError, 3),
    (errors.ConflictError, 4),
    (errors.HostError, 5),
    (errors.ImageError, 6),
    (errors.NetworkError, 7),
    (errors.OperationTimeoutError, 8),
    (errors.GuestAgentError, 9),
    (errors.VMMError, 10),
    (errors.UnavailableError, 11),
    (errors.AuthError, 12),
]


def exit_code_for(err: errors.SmolboxError) -> int:
    for family, code in _EXIT_BY_FAMILY:
        if isinstance(err, family):
            return code
    return EXIT_FAILURE


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: Sequence[str],
                rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    stdout.print(table)


def print_mapping(data: Mapping[str, Any], title: str | None = None) -> None:
    print_table(title, ["field", "value"], ((k, v) for k, v in data.items()))


def render_error(err: errors.SmolboxError, as_json: bool) -> None:
    if as_json:
        sys.stderr.write(json.dumps(err.to_dict(), default=str) + "\n")
        return
    head = Text()
    head.append("error", style="bold red")
    head.append(f"[{err.code}]", style="red")
    head.append(f": {err.message}")
    stderr.print(head)
    shown = {k: v for k, v in err.details.items() if v not in (None, "", [], {})}
    for key, value in shown.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > 2000:
            text = "…" + text[-2000:]
        stderr.print(Text(f"  │ {key}: ", style="dim") + Text(text))
    stderr.print(Text("  help: ", style="bold cyan") + Text(err.help))

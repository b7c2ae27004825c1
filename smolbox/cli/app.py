"""The root ``smolbox`` typer app and the global options every command reads.

Why its own module: command modules register themselves on ``app`` and the entry
point (``main.py``) imports those modules; with ``app`` here, both depend on this
module and never on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer

app = typer.Typer(
    name="smolbox",
    help="Disposable microVM sandboxes: create, exec, snapshot, fork.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


@dataclass
class Options:
    """Global options shared by every command (set by the root callback)."""

    json: bool = False


OPTIONS = Options()


@app.callback()
def _root(
    json_output: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
) -> None:
    OPTIONS.json = json_output

"""The `smolbox` command: a thin shell over the SDK and engine.

Each command group lives in its own module and registers itself on ``app``; this
module only wires them together and turns catalogue errors into diagnostics and
exit codes (see ``render.exit_code_for``).
"""

from __future__ import annotations

import sys

import click
import typer
from typer.exceptions import TyperException

from smolbox import errormap, errors
from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app


def _register_commands() -> None:
    """Import command modules; each adds its commands to ``app``."""
    from smolbox.cli import (  # noqa: F401
        doctor,
        files,
        image,
        machines,
        mcp,
        pause,
        serve,
        shell,
        snapshots,
        vmfile,
    )


def main() -> None:
    _register_commands()
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of
        # raising it (click >= 8.2); `exec` and `run` pass the guest's code this way.
        code = app(standalone_mode=False)
    except errors.SmolboxError as err:
        render.render_error(err, OPTIONS.json)
        sys.exit(render.exit_code_for(err))
    except errormap.FOREIGN as foreign:  # a full disk, no memory: still a coded error
        mapped = errormap.translate(foreign, operation="smolbox")
        render.render_error(mapped, OPTIONS.json)
        sys.exit(render.exit_code_for(mapped))
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        render.stderr.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except (TyperException, click.ClickException) as usage_error:
        # Usage errors from click, or from the click that typer vendors; both can show
        # themselves and carry their exit code (2 for usage).
        show = getattr(usage_error, "show", None)
        if show is None:
            raise
        show()
        sys.exit(usage_error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

"""``smolbox mcp``: the MCP server on stdio, for agents that use tools through MCP.

Machines are made on this host's embedded engine, or through ``smolbox serve``
when ``SMOLBOX_URL`` (or ``--url``) names one. Sandboxes made in the session are
deleted when it ends (the client closes stdin).
"""

from __future__ import annotations

import typer

from smolbox.cli.app import app


@app.command()
def mcp(
    url: str | None = typer.Option(None, "--url", help="Use this smolbox server "
                                   "(default: SMOLBOX_URL, else this host's engine)."),
    token: str | None = typer.Option(None, "--token", help="The server's token "
                                     "(default: SMOLBOX_TOKEN)."),
) -> None:
    """Serve the Model Context Protocol on stdio (tools: create_sandbox, run_command,
    read_file, write_file, list_files, delete_sandbox)."""
    from smolbox.mcp.tools import build_server
    from smolbox.sdk.resolve import borrowed_backend

    with borrowed_backend(url=url, token=token) as (backend, _owned):
        server, _ = build_server(backend)
        server.run("stdio")

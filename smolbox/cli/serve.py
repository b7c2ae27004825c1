"""``smolbox serve``: the REST server (FastAPI on uvicorn) over this host's engine.

Safe defaults: loopback only, bearer-token auth on, the token generated on first
start and stored 0600 in SMOLBOX_HOME. Turning auth off is allowed only on
loopback, so a typo cannot expose VMs that run untrusted code to the network.
"""

from __future__ import annotations

import ipaddress
import json

import typer

from smolbox import errors
from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.server.settings import MiB


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default loopback)."),
    port: int = typer.Option(7777, "--port", "-p", help="Port (0 picks a free one)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Disable auth (loopback only)."),
    max_upload_mib: int = typer.Option(1024, "--max-upload-mib", min=1),
    max_download_mib: int = typer.Option(1024, "--max-download-mib", min=1),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the REST API (/v1, /docs, /openapi.json, /healthz, /readyz, /metrics)."""
    from smolbox.paths import Paths
    from smolbox.server import ServerSettings, create_app, load_or_create_token, token_path
    from smolbox.server.runner import bind, serve_forever, url_of

    if no_auth and not _is_loopback(host):
        raise errors.ValidationError(
            f"Refusing to serve without auth on {host}", field="host", value=host,
            help="Keep auth on (clients send SMOLBOX_TOKEN), or bind to 127.0.0.1.")
    paths = Paths.from_env()
    paths.ensure(paths.home)
    path = token_path(paths)
    token = None if no_auth else load_or_create_token(path)
    settings = ServerSettings(token=token, max_upload_bytes=max_upload_mib * MiB,
                              max_download_bytes=max_download_mib * MiB)
    sock = bind(host, port)
    url = url_of(sock)
    if OPTIONS.json:  # one line, flushed: a supervisor reads it while we keep running
        print(json.dumps({"url": url, "token_file": None if no_auth else str(path)}),
              flush=True)
    else:
        render.stdout.print(f"smolbox server listening on {url}")
        if token is None:
            render.stdout.print("auth is OFF (--no-auth)")
        else:
            render.stdout.print(f"token in {path}: export SMOLBOX_URL={url} "
                                f"SMOLBOX_TOKEN=$(cat {path})")
    serve_forever(create_app(settings), sock, log_level=log_level)

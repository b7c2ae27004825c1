"""Run the app under uvicorn: in the foreground (``smolbox serve``) or in a thread.

Why we bind the socket ourselves: ``port=0`` then gives a free port with no race
between picking and binding it, and the URL is known before serving starts.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from smolbox import errors


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == 98:
            raise errors.PortInUseError(port, details={"host": host}) from None
        raise errors.HostError(f"Cannot listen on {host}:{port}: {exc.strerror}",
                               details={"host": host, "port": port}) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_forever(app: FastAPI, sock: socket.socket, *, log_level: str = "info") -> None:
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as server: httpx.get(server.url + "/healthz")``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self._sock = bind(host, port)
        self.url = url_of(self._sock)
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]},
                                        name="smolbox-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise errors.UnavailableError("The server thread exited during startup")
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""The client end of ``/v1/machines/{vm}/shell``: a ShellSession over a WebSocket.

Why the sync ``websockets`` client: the SDK is synchronous at its core (the async
surface runs it in threads), and its sync connection allows one thread to send
keystrokes while another reads output, which is exactly a terminal relay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from smolbox import errors

OPEN_TIMEOUT = 60.0


class RemoteShell:
    """A terminal on a machine behind a smolbox server."""

    def __init__(self, connection: ClientConnection, url: str) -> None:
        self._ws = connection
        self._url = url
        self._exit_code: int | None = None

    @classmethod
    def open(cls, base_url: str, vm: str, *, token: str | None, command: list[str] | None,
             rows: int, cols: int) -> RemoteShell:
        query: list[tuple[str, Any]] = [("rows", rows), ("cols", cols)]
        query += [("command", arg) for arg in command or []]
        ws_base = "ws" + base_url.removeprefix("http")
        url = f"{ws_base}/v1/machines/{vm}/shell?{urlencode(query)}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            # entered as a context manager: websockets >= 17 wants that (close() exits it)
            ws = connect(url, additional_headers=headers, open_timeout=OPEN_TIMEOUT,
                         max_size=2**22).__enter__()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise errors.ConnectionError(
                f"Cannot open a shell WebSocket to {base_url}: {exc}", url=base_url) from None
        shell = cls(ws, base_url)
        try:
            first = ws.recv(timeout=OPEN_TIMEOUT)
            shell._control(first)
        except BaseException:
            ws.close()
            raise
        return shell

    def _control(self, message: str | bytes) -> dict[str, Any]:
        """Handle a control frame: raise a sent error, remember an exit code."""
        if isinstance(message, bytes):
            raise errors.InternalError("The server sent output before the shell was ready")
        obj = json.loads(message)
        if not isinstance(obj, dict):
            raise errors.InternalError("The server sent a malformed shell control frame")
        if obj.get("type") == "error":
            raise errors.from_wire(obj)
        if obj.get("type") == "exit":
            code = obj.get("code")
            self._exit_code = code if isinstance(code, int) else 1
        return obj

    def send(self, data: bytes) -> None:
        if data:
            self._send(data)

    def close_input(self) -> None:
        self._send(json.dumps({"type": "eof"}))

    def _send(self, frame: bytes | str) -> None:
        try:
            self._ws.send(frame)
        except ConnectionClosed:
            raise errors.ConnectionError(
                f"The shell connection to {self._url} closed", url=self._url) from None

    def output(self) -> Iterator[bytes]:
        try:
            for message in self._ws:
                if isinstance(message, bytes):
                    yield message
                elif self._control(message).get("type") == "exit":
                    return
        except ConnectionClosed:
            pass
        if self._exit_code is None:
            raise errors.ConnectionError(
                f"The shell connection to {self._url} ended without an exit status",
                url=self._url)

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def close(self) -> None:
        self._ws.close()

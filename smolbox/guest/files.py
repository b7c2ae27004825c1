"""File operations in the guest: chunked atomic writes, credit-paced reads, metadata.

Why temp file + rename: a write that fails half-way (host gone, disk full,
cancelled) must never leave a truncated file where a complete one is expected;
readers of the path see the old content or the new, nothing in between.

Stdlib only: this file is copied into the guest rootfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
import threading
import zlib
from collections.abc import Callable
from typing import Any

from smolbox.guest import protocol as p
from smolbox.guest.session import Credit, Handler, Inbox, OpError, Session


def _abs(req: dict[str, Any], key: str = "path") -> str:
    path = req.get(key)
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise OpError(f"{key} must be an absolute path", kind="request", path=str(path))
    return path


class FileWriter(Handler):
    """Receives a file in chunks into a temp file, renamed over the target at the end."""

    def __init__(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        self.session = session
        self.stream = stream
        self.path = _abs(req)
        self.mode = int(req.get("mode", 0o644)) & 0o7777
        self.inbox = Inbox(session, stream)
        directory, name = os.path.split(self.path)
        if not name:
            raise OpError("path names a directory", err=errno.EISDIR, path=self.path)
        self.tmp = os.path.join(directory, f".{name}.smolbox-{os.urandom(4).hex()}.tmp")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise OpError.from_os(exc, self.path) from None

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"write-{self.stream}", daemon=True).start()

    def on_frame(self, frame: p.Frame) -> None:
        if frame.type == p.DATA:
            self.inbox.put(frame)
        elif frame.type == p.CANCEL:
            self.inbox.put(None)

    def session_closed(self) -> None:
        self.inbox.put(None)

    def _run(self) -> None:
        size = 0
        crc = 0
        try:
            while True:
                frame = self.inbox.get()
                if frame is None:
                    raise OpError("transfer cancelled", kind="cancelled")
                if frame.eof and frame.flags & p.FLAG_CRC:
                    self.inbox.consumed_bytes(len(frame.payload))
                    _check_crc(frame.payload, crc, size, self.path)
                    break
                view = memoryview(frame.payload)
                while view:
                    view = view[os.write(self.fd, view):]
                crc = zlib.crc32(frame.payload, crc)
                size += len(frame.payload)
                self.inbox.consumed_bytes(len(frame.payload))
                if frame.eof:
                    break
            os.fchmod(self.fd, self.mode)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
        except (OSError, OpError) as exc:
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            err = exc if isinstance(exc, OpError) else OpError.from_os(exc, self.path)
            self.session.error(self.stream, err)
            return
        self.session.forget(self.stream)
        self.session.send_json(p.REPLY, self.stream, {"size": size})


def _check_crc(payload: bytes | bytearray, crc: int, size: int, path: str) -> None:
    """The host's CRC-32 of the whole file against what arrived here."""
    if len(payload) != p.CRC.size:
        raise OpError("checksum frame of the wrong size", kind="protocol")
    expected = p.CRC.unpack(payload)[0]
    if expected != crc:
        raise OpError(f"CRC-32 mismatch after {size} bytes: the host sent {expected:08x}, "
                      f"{crc:08x} arrived", kind="integrity", path=path)


class FileReader(Handler):
    """Sends a file in big chunks, as fast as the host's credit allows."""

    def __init__(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        self.session = session
        self.stream = stream
        self.path = _abs(req)
        self.credit = Credit(int(req.get("window", p.WRITE_WINDOW)))
        self.with_crc = req.get("crc") is True
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OpError.from_os(exc, self.path) from None
        if statmod.S_ISDIR(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise OpError("is a directory", err=errno.EISDIR, path=self.path)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"read-{self.stream}", daemon=True).start()

    def on_frame(self, frame: p.Frame) -> None:
        if frame.type == p.CREDIT_FRAME and len(frame.payload) == p.CREDIT.size:
            self.credit.grant(p.CREDIT.unpack(frame.payload)[0])
        elif frame.type == p.CANCEL:
            self.credit.abort()

    def session_closed(self) -> None:
        self.credit.abort()

    def _run(self) -> None:
        try:
            buf = bytearray(p.DATA_CHUNK)  # reused: each send completes before the next read
            view = memoryview(buf)
            crc = 0
            while True:
                n = os.readv(self.fd, [view])
                if not n:
                    break
                if self.with_crc:
                    crc = zlib.crc32(view[:n], crc)
                if not self.credit.take(n):
                    return
                if not self.session.send_parts(p.DATA, self.stream, view[:n]):
                    return
            self.session.forget(self.stream)
            if self.with_crc:
                self.session.send_parts(p.DATA, self.stream, p.CRC.pack(crc),
                                        p.FLAG_EOF | p.FLAG_CRC)
            else:
                self.session.send_parts(p.DATA, self.stream, b"", p.FLAG_EOF)
        except OSError as exc:
            self.session.error(self.stream, OpError.from_os(exc, self.path))
        finally:
            os.close(self.fd)


def _stat_dict(path: str, st: os.stat_result, name: str | None = None) -> dict[str, Any]:
    mode = st.st_mode
    kind = ("dir" if statmod.S_ISDIR(mode) else "file" if statmod.S_ISREG(mode)
            else "symlink" if statmod.S_ISLNK(mode) else "other")
    result: dict[str, Any] = {
        "path": path, "name": name if name is not None else os.path.basename(path) or "/",
        "type": kind, "size": st.st_size, "mode": statmod.S_IMODE(mode),
        "mtime": st.st_mtime, "uid": st.st_uid, "gid": st.st_gid,
    }
    if kind == "symlink":
        with contextlib.suppress(OSError):
            result["target"] = os.readlink(path)
    return result


def op_stat(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    try:
        return _stat_dict(path, os.lstat(path))
    except OSError as exc:
        raise OpError.from_os(exc, path) from None


def op_list(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    entries = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    entries.append(_stat_dict(entry.path, entry.stat(follow_symlinks=False),
                                              entry.name))
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    entries.sort(key=lambda e: e["name"])
    return {"entries": entries}


def op_mkdir(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    mode = int(req.get("mode", 0o755))
    try:
        if req.get("parents", True):
            os.makedirs(path, mode=mode, exist_ok=True)
        else:
            os.mkdir(path, mode)
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    return {}


def op_remove(req: dict[str, Any]) -> dict[str, Any]:
    path = _abs(req)
    if path == "/":
        raise OpError("refusing to remove /", err=errno.EPERM, path=path)
    try:
        st = os.lstat(path)
        if statmod.S_ISDIR(st.st_mode):
            if req.get("recursive"):
                import shutil  # only here: every import costs guest boot time under TCG

                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise OpError.from_os(exc, path) from None
    return {}


# ------------------------------------------------------------------------------- the agent


SIMPLE_OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "stat": op_stat, "list": op_list, "mkdir": op_mkdir, "remove": op_remove,
}

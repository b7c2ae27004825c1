"""The in-guest agent: serves the host's requests over the virtio-serial port.

Why this shape:
- One reader (the serving thread) parses frames and hands them to per-stream
  handlers.  Processes are spawned inline and their output is moved by one
  pump thread (:mod:`smolbox.guest.process`); file transfers get a thread each
  (:mod:`smolbox.guest.files`), so a slow transfer never stalls the others.
- A virtio-serial port outlives host connections (the CLI connects once per
  command).  A session ends when reads hit EOF or a new HELLO arrives; its
  foreground processes are killed, background ones keep running and buffer
  their output until a later session attaches to them by pid.
- Host -> guest bulk data (file writes, stdin) is credit-controlled so a fast
  host cannot make the guest buffer unbounded data; guest -> host file reads
  are paced by the host's credit the same way.

Stdlib only: this file is copied into the guest rootfs.  On the host, tests run
``python -m smolbox.guest.agent --socket PATH --root DIR``, which serves a unix
socket and keeps identity changes (hostname, machine-id, clock) inside DIR.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import glob
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from smolbox.guest import protocol as p
from smolbox.guest.blockxfer import XFER_OPS
from smolbox.guest.files import SIMPLE_OPS, FileReader, FileWriter
from smolbox.guest.fsops import FS_OPS
from smolbox.guest.process import Proc, Pump
from smolbox.guest.session import (
    FdTransport,
    FrameReader,
    OpError,
    Session,
    SocketTransport,
    Transport,
)

NOTE_READY = b"R"
NOTE_POWER_OFF = b"P"
RNDADDENTROPY = 0x40085203
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# Operations answered with one reply, each run in a thread of its own.
REPLY_OPS = {**SIMPLE_OPS, **XFER_OPS, **FS_OPS}


class Agent:
    """State that outlives sessions: env defaults, background processes, identity."""

    def __init__(self, *, system: bool, root: str = "/",
                 on_power_off: Callable[[], None] | None = None) -> None:
        self.system = system  # True inside the guest: identity ops change the machine
        self.root = root  # where hostname/machine-id files live (a temp dir in host tests)
        self.on_power_off = on_power_off
        self.env_defaults: dict[str, str] = {}
        self.processes: dict[int, Proc] = {}
        self.default_cwd = "/root" if os.path.isdir("/root") and os.geteuid() == 0 else "/"
        self.clock_offset_ns = 0
        self.stop = False
        self.pump = Pump()

    def base_env(self, who: pwd.struct_passwd | None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": "C.UTF-8"}
        if who is None:
            with contextlib.suppress(KeyError):
                who = pwd.getpwuid(os.geteuid())
        if who is not None:
            env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.update(self.env_defaults)
        return env

    # -- serving
    def serve(self, transport: Transport, *, persistent: bool, idle_sleep: float = 0.02
              ) -> None:
        """Serve ``transport`` until it ends (``persistent``: forever, for the port).

        Between sessions bytes are scanned for a HELLO (anything before it may be
        the tail of an older connection); within a session frames are read
        exactly by a FrameReader.
        """
        decoder = p.FrameDecoder()
        scratch = memoryview(bytearray(64 * 1024))
        hello: p.Frame | None = None
        while not self.stop:
            if hello is None:
                hello = decoder.resync_hello()
            if hello is not None:
                session = self._hello(transport, hello)
                hello = None
                if session is None:
                    continue
                reader = FrameReader(transport, decoder.take_rest())
                hello, eof = self._serve_session(session, reader)
                decoder.feed(reader.take_rest())
                if eof and not persistent:
                    return
                continue
            try:
                n = transport.readinto(scratch)
            except OSError:
                n = 0
            if n == 0:
                decoder.clear()
                if not persistent:
                    return
                time.sleep(idle_sleep)  # no host connected: reads give EOF until one is
                continue
            decoder.feed(scratch[:n])

    def _serve_session(self, session: Session,
                       reader: FrameReader) -> tuple[p.Frame | None, bool]:
        """Run one session; returns (a HELLO that started the next one, reached EOF)."""
        try:
            while not self.stop:
                try:
                    frame = reader.next()
                except p.ProtocolViolation as exc:
                    session.send_json(p.ERROR, 0, {"message": f"guest: {exc}",
                                                   "kind": "protocol"})
                    return None, False
                if frame is None:
                    return None, True
                if frame.type == p.HELLO:
                    return frame, False
                try:
                    self._dispatch(session, frame)
                except p.ProtocolViolation as exc:
                    session.send_json(p.ERROR, frame.stream, {"message": str(exc),
                                                              "kind": "protocol"})
            return None, True
        finally:
            session.close()

    def _hello(self, transport: Transport, frame: p.Frame) -> Session | None:
        session = Session(transport)
        try:
            hello = frame.json()
        except p.ProtocolViolation:
            return None
        reply = {"version": p.VERSION, "nonce": hello.get("nonce"), "caps": list(p.CAPABILITIES),
                 "window": p.WRITE_WINDOW, "max_frame": p.MAX_FRAME, "pid": os.getpid(),
                 "background": sorted(self.processes)}
        if frame.version != p.VERSION or hello.get("version") != p.VERSION:
            reply["error"] = f"unsupported protocol version {hello.get('version')}"
            session.send_json(p.HELLO, 0, reply)
            return None
        session.send_json(p.HELLO, 0, reply)
        return session

    def _dispatch(self, session: Session, frame: p.Frame) -> None:
        if frame.type == p.REQUEST:
            req = frame.json()
            self._request(session, frame.stream, req)
            return
        handler = session.handler(frame.stream)
        if handler is not None:
            handler.on_frame(frame)
        # frames for finished streams are late arrivals: dropped

    def _request(self, session: Session, stream: int, req: dict[str, Any]) -> None:
        op = req.get("op")
        try:
            if op == "ping":
                session.send_json(p.REPLY, stream, {"t": time.time_ns()})
            elif op == "exec":
                proc = Proc(self, session, stream, req)
                session.register(stream, proc)
                proc.start()
            elif op == "attach":
                target = self.processes.get(int(req.get("pid", 0)))
                if target is None:
                    raise OpError(f"no background process {req.get('pid')}", err=errno.ESRCH,
                                  kind="process")
                target.attach(session, stream)
            elif op == "ps":
                session.send_json(p.REPLY, stream, {"processes": self.list_processes()})
            elif op == "write_file":
                writer = FileWriter(session, stream, req)
                session.register(stream, writer)
                writer.start()
            elif op == "read_file":
                reader = FileReader(session, stream, req)
                session.register(stream, reader)
                reader.start()
            elif op in REPLY_OPS:
                threading.Thread(target=self._simple, args=(session, stream, op, req),
                                 daemon=True).start()
            elif op == "set_env":
                self.env_defaults.update({str(k): str(v) for k, v in
                                          (req.get("env") or {}).items()})
                for key in req.get("unset") or []:
                    self.env_defaults.pop(str(key), None)
                session.send_json(p.REPLY, stream, {})
            elif op in ("set_identity", "set_time"):
                self.set_identity(req)
                session.send_json(p.REPLY, stream, {})
            elif op == "shutdown":
                session.send_json(p.REPLY, stream, {})
                self.shutdown()
            else:
                raise OpError(f"unknown op {op!r}", kind="request")
        except OpError as exc:
            session.error(stream, exc)
        except (ValueError, TypeError) as exc:
            session.error(stream, OpError(f"bad request: {exc}", kind="request"))

    def _simple(self, session: Session, stream: int, op: str, req: dict[str, Any]) -> None:
        try:
            result = REPLY_OPS[op](req)
        except OpError as exc:
            session.error(stream, exc)
            return
        except Exception as exc:
            session.error(stream, OpError(f"{op} failed: {exc!r}"))
            return
        session.send_json(p.REPLY, stream, result)

    def list_processes(self) -> list[dict[str, Any]]:
        """Background processes still running: pid and what started them."""
        running = []
        for pid, proc in sorted(self.processes.items()):
            if proc.exit is None:
                req = proc.req
                running.append({"pid": pid, "argv": req.get("argv"), "env": req.get("env") or {},
                                "cwd": req.get("cwd"), "user": req.get("user")})
        return running

    # -- identity and power
    def set_identity(self, req: dict[str, Any]) -> None:
        try:
            if req.get("hostname"):
                self._set_hostname(str(req["hostname"]))
            if req.get("machine_id"):
                self._write_atomic(os.path.join(self.root, "etc/machine-id"),
                                   str(req["machine_id"]).strip() + "\n")
            if req.get("entropy"):
                self._add_entropy(base64.b64decode(req["entropy"]))
            if req.get("time_ns"):
                self._set_clock(int(req["time_ns"]))
        except OSError as exc:
            raise OpError.from_os(exc) from None

    def _set_hostname(self, name: str) -> None:
        if len(name) > 64 or not name or "/" in name or "\0" in name:
            raise OpError(f"invalid hostname {name!r}", kind="request")
        if self.system:
            socket.sethostname(name)
        self._write_atomic(os.path.join(self.root, "etc/hostname"), name + "\n")

    def _add_entropy(self, data: bytes) -> None:
        """Credit the host's bytes to the kernel pool so clones stop sharing RNG state."""
        if self.system:
            try:
                fd = os.open("/dev/random", os.O_WRONLY)
                try:
                    info = struct.pack("ii", len(data) * 8, len(data)) + data
                    fcntl.ioctl(fd, RNDADDENTROPY, info)
                    return
                finally:
                    os.close(fd)
            except OSError:
                pass
        with open("/dev/urandom", "wb") as fh:  # mixes in without crediting
            fh.write(data)

    def _set_clock(self, time_ns: int) -> None:
        if self.system:
            time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
        else:
            self.clock_offset_ns = time_ns - time.time_ns()

    @staticmethod
    def _write_atomic(path: str, content: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.smolbox-tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.replace(tmp, path)

    def shutdown(self) -> None:
        os.sync()
        for proc in list(self.processes.values()):
            proc.signal(signal.SIGKILL)
        if self.on_power_off is not None:
            self.on_power_off()
        self.stop = True



# ------------------------------------------------------------------------------ entry points


def find_port(name: str = p.PORT_NAME, sysfs: str = "/sys/class/virtio-ports",
              dev: str = "/dev") -> str | None:
    """The /dev/vportNpM whose sysfs name matches (there is no udev to make a symlink)."""
    for entry in sorted(glob.glob(os.path.join(sysfs, "*", "name"))):
        try:
            with open(entry, encoding="ascii") as fh:
                if fh.read().strip() == name:
                    return os.path.join(dev, os.path.basename(os.path.dirname(entry)))
        except OSError:
            continue
    return None


def find_ports(name: str = p.PORT_NAME, sysfs: str = "/sys/class/virtio-ports",
               dev: str = "/dev") -> list[str]:
    """Every port named ``name`` or ``name.N``: the host opens several so that several
    host processes can each hold a connection (QEMU serves one client per port)."""
    found: list[str] = []
    for entry in sorted(glob.glob(os.path.join(sysfs, "*", "name"))):
        try:
            with open(entry, encoding="ascii") as fh:
                port = fh.read().strip()
        except OSError:
            continue
        if port == name or (port.startswith(name + ".") and port[len(name) + 1:].isdigit()):
            found.append(os.path.join(dev, os.path.basename(os.path.dirname(entry))))
    return found


def serve_port(notify_fd: int | None = None, name: str = p.PORT_NAME) -> int:
    """Serve the virtio-serial ports forever (the guest's mode); returns an exit code.

    One thread per port, all sharing one Agent: background processes, env defaults and
    identity are the machine's, whichever port a host process came in on.
    """
    paths: list[str] = []
    for _ in range(600):
        if find_port(name) is not None:
            paths = [path for path in find_ports(name) if os.path.exists(path)]
            if paths:
                break
        time.sleep(0.05)
    if not paths:
        print(f"smolbox-agent: no virtio port named {name}", file=sys.stderr)
        return 1
    fds = [os.open(path, os.O_RDWR | os.O_CLOEXEC) for path in paths]

    def power_off() -> None:
        if notify_fd is not None:
            os.write(notify_fd, NOTE_POWER_OFF)

    agent = Agent(system=True, on_power_off=power_off)
    for fd in fds[1:]:
        # Extra ports are for concurrent host processes: waking less often while idle
        # keeps an idle machine's CPU low (each wake-up costs ~0.4 ms under TCG), at
        # up to 0.5 s more on their first connect.
        threading.Thread(target=agent.serve, args=(FdTransport(fd),),
                         kwargs={"persistent": True, "idle_sleep": 0.5}, name=f"port-{fd}",
                         daemon=True).start()
    if notify_fd is not None:
        os.write(notify_fd, NOTE_READY)
    agent.serve(FdTransport(fds[0]), persistent=True)
    return 0


def serve_socket(path: str, root: str) -> int:
    """Serve a unix socket, one connection at a time (host-side tests)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    agent = Agent(system=False, root=root)
    print("SMOLBOX_READY", flush=True)
    try:
        while not agent.stop:
            conn, _ = listener.accept()
            with conn:
                agent.serve(SocketTransport(conn), persistent=False)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse  # only for the command line: keeps it off the guest's boot path

    parser = argparse.ArgumentParser(prog="smolbox-agent", description=__doc__)
    parser.add_argument("--socket", help="serve this unix socket instead of the virtio port")
    parser.add_argument("--root", default=None,
                        help="with --socket: directory receiving hostname/machine-id")
    parser.add_argument("--port-name", default=p.PORT_NAME)
    args = parser.parse_args(argv)
    if args.socket:
        root = args.root or os.path.join(os.path.dirname(os.path.abspath(args.socket)), "root")
        return serve_socket(args.socket, root)
    return serve_port(None, args.port_name)


if __name__ == "__main__":
    sys.exit(main())

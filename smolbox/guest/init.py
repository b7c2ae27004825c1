"""PID 1 of a smolbox guest: mount the basics, run the agent, reap orphans, power off.

Why our own init instead of systemd: boot time is the product.  This init does
only what the agent needs (kernel filesystems, hostname, loopback), then forks:
the child serves the agent, the parent stays PID 1.  Keeping the agent out of
PID 1 matters because PID 1 must reap every orphan with ``waitpid(-1)``; if the
agent did that itself it would steal exit statuses from its own
``subprocess`` waits.  PID 1 must also never exit (the kernel panics), so power
off goes through ``reboot(RB_POWER_OFF)``.

Stdlib only: this file is copied into the guest rootfs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

from smolbox.guest import agent

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_RELATIME = 1 << 21
RB_POWER_OFF = 0x4321FEDC
# A microvm booted without ACPI has no power-off device: RB_POWER_OFF only halts the
# CPU and QEMU keeps running. The host starts QEMU with -no-reboot and the kernel with
# reboot=t, so a reboot request is what really ends the machine.
RB_AUTOBOOT = 0x01234567
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

READY_LINE = b"SMOLBOX_READY\n"

# (source, target, fstype, flags, data, mode of the mount point)
MOUNTS: tuple[tuple[str, str, str, int, str, int], ...] = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", 0o555),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", 0o555),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0o755),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666",
     0o755),
    ("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0o1777),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0o755),
    ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0o1777),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME,
     "", 0o755),
)

_libc = ctypes.CDLL(None, use_errno=True)


def _log(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"smolbox-init: {message}\n".encode())


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) through libc; an already-mounted target (EBUSY) is fine."""
    res = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                      data.encode() if data else None)
    if res != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def mount_all() -> None:
    """Mount the kernel filesystems; a failure is logged, not fatal (the agent may still serve)."""
    for source, target, fstype, flags, data, mode in MOUNTS:
        try:
            os.makedirs(target, mode=mode, exist_ok=True)
            mount(source, target, fstype, flags, data)
        except OSError as err:
            _log(str(err))


def set_hostname() -> None:
    """Hostname from /etc/hostname (clones get theirs later from the host)."""
    name = "smolbox"
    with contextlib.suppress(OSError), open("/etc/hostname", encoding="utf-8") as fh:
        name = fh.read().strip() or name
    try:
        socket.sethostname(name)
    except OSError as err:
        _log(f"sethostname: {err}")


def loopback_up() -> None:
    """Bring ``lo`` up (services inside the guest often bind 127.0.0.1)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            ifreq = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    except OSError as err:
        _log(f"loopback: {err}")


def open_console() -> int:
    """A write-only fd on the console (the kernel may not have given PID 1 one)."""
    try:
        return os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return 1


def power_off() -> None:
    """Stop every process, flush disks, power off.  Never returns when PID 1."""
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)
    os.sync()
    if os.getpid() == 1:
        _libc.reboot(RB_AUTOBOOT)
        _log(f"reboot failed: {os.strerror(ctypes.get_errno())}")
        while True:  # PID 1 must not exit
            time.sleep(3600)
    sys.exit(0)


class Supervisor:
    """Runs the agent child, restarts it when it dies, reaps every orphan."""

    def __init__(self, console: int) -> None:
        self.console = console
        self.notify_r, self.notify_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.agent_pid = 0
        self.agent_started = 0.0
        self.announced = False
        self.power_off_requested = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGUSR2, signal.SIGPWR, signal.SIGTERM):
            self.power_off_requested = True

    def start_agent(self) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGUSR2, signal.SIGPWR, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(self.notify_r)
                os.close(self.wake_r)
                os.close(self.wake_w)
                os.setsid()
                code = agent.serve_port(notify_fd=self.notify_w)
            except BaseException as err:  # the child must never return into PID 1's loop
                _log(f"agent crashed: {err!r}")
            finally:
                os._exit(code)
        self.agent_pid = pid
        self.agent_started = time.monotonic()

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.agent_pid:
                self.agent_pid = 0

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGCHLD, signal.SIGUSR2, signal.SIGPWR, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        self.start_agent()
        while not self.power_off_requested:
            try:
                readable, _, _ = select.select([self.notify_r, self.wake_r], [], [], 5.0)
            except InterruptedError:
                readable = []
            if self.notify_r in readable:
                self._handle_notes(os.read(self.notify_r, 64))
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
            self.reap()
            if not self.agent_pid and not self.power_off_requested:
                # a crash loop must not eat the CPU that the host is emulating
                if time.monotonic() - self.agent_started < 1.0:
                    time.sleep(0.5)
                _log("agent exited; restarting it")
                self.start_agent()
        power_off()

    def _handle_notes(self, notes: bytes) -> None:
        for note in notes:
            if note == agent.NOTE_READY[0] and not self.announced:
                self.announced = True
                with contextlib.suppress(OSError):
                    os.write(self.console, READY_LINE)
            elif note == agent.NOTE_POWER_OFF[0]:
                self.power_off_requested = True


def main() -> None:
    """Entry point of /sbin/smolbox-init.

    PID 1 must never exit: the kernel would panic and, with the host's -no-reboot,
    QEMU would end with nothing to show for it. A failure is written to the console
    instead and init stays up, so the host's boot timeout reports the console tail
    (and the traceback) to the user.
    """
    try:
        os.umask(0o022)
        os.environ.setdefault("PATH",
                              "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        os.environ.setdefault("HOME", "/root")
        os.environ.setdefault("LANG", "C.UTF-8")
        mount_all()
        set_hostname()
        loopback_up()
        console = open_console()
        Supervisor(console).run()
    except BaseException:
        import traceback

        _log("init failed:\n" + traceback.format_exc())
        if os.getpid() != 1:
            raise
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()

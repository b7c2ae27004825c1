"""Process identity: a pid plus its start time, so a reused pid is never mistaken.

Why: pids are recycled. After a crash, the pid recorded for a machine's QEMU may
belong to an unrelated program; checking "is pid N alive" and then killing it
could kill that program. The kernel's start time of a process (field 22 of
``/proc/PID/stat``, in clock ticks since boot) never changes for a process and
differs between two processes that reuse one pid, so (pid, start_time) names one
process for the lifetime of the host.

Signals go through a pidfd where the kernel offers one: the pidfd is opened
first and the start time checked afterwards, so the signal reaches exactly the
process that was verified, with no window for reuse in between.
"""

from __future__ import annotations

import errno
import os
import signal as signal_module
from dataclasses import dataclass
from pathlib import Path

from smolbox import errors

__all__ = ["ProcStat", "ProcessIdentity", "read_stat"]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` smolbox uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_time: int


def read_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/PID/stat``; None when no such process exists.

    ``comm`` (field 2) is in parentheses and may itself contain spaces and ')',
    so fields are counted from the *last* ')'.
    """
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as err:
        if err.errno in (errno.ESRCH, errno.ENOENT):
            return None
        raise errors.HostError(f"Cannot read /proc/{pid}/stat: {err.strerror}",
                               details={"pid": pid}) from None
    head, sep, tail = raw.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 20:
        raise errors.HostError(f"Unexpected format of /proc/{pid}/stat",
                               details={"pid": pid, "stat": raw[:200]},
                               help="smolbox needs a Linux /proc; run `smolbox doctor`.")
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(pid=pid, comm=head.partition("(")[2], state=fields[0],
                    ppid=int(fields[1]), start_time=int(fields[19]))


@dataclass(frozen=True)
class ProcessIdentity:
    """One process for the lifetime of the host: ``pid`` and its kernel start time."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The identity of the process running now as ``pid`` (ProcessGoneError if none)."""
        stat = read_stat(pid)
        if stat is None or stat.state in ("Z", "X"):
            raise errors.ProcessGoneError(pid, message=f"No running process with pid {pid}")
        return cls(pid, stat.start_time)

    def is_alive(self) -> bool:
        """True when this very process still runs (same pid and start time, not a zombie)."""
        stat = read_stat(self.pid)
        return stat is not None and stat.start_time == self.start_time and stat.state not in (
            "Z", "X")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process; ProcessGoneError if it exited or the pid was reused."""
        fd = self._pidfd()
        try:
            if not self.is_alive():
                raise errors.ProcessGoneError(
                    self.pid, self.start_time,
                    message=f"Process {self.pid} (start time {self.start_time}) is gone; "
                            "not signalling its pid",
                )
            try:
                if fd is not None:
                    signal_module.pidfd_send_signal(fd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                raise errors.ProcessGoneError(self.pid, self.start_time) from None
            except OSError as err:
                raise errors.HostError(
                    f"Cannot send signal {sig} to process {self.pid}: {err.strerror}",
                    details={"pid": self.pid, "signal": sig},
                    help="smolbox can only signal processes it is allowed to; run it as the "
                         "user that started the machine.",
                ) from None
        finally:
            if fd is not None:
                os.close(fd)

    def _pidfd(self) -> int | None:
        """A pidfd pinning the current holder of ``pid`` (None where unsupported)."""
        opener = getattr(os, "pidfd_open", None)
        if opener is None:
            return None
        try:
            fd: int = opener(self.pid)
            return fd
        except ProcessLookupError:
            raise errors.ProcessGoneError(self.pid, self.start_time) from None
        except OSError:
            return None  # ENOSYS on old kernels, EMFILE…: fall back to kill()



def owner_token() -> str:
    """This process as ``"<pid>-<start time>"``: what rows record as their owner while
    a multi-step operation runs, so any process can tell a live one from a dead one."""
    me = ProcessIdentity.of(os.getpid())
    return f"{me.pid}-{me.start_time}"


def owner_alive(token: str) -> bool:
    """Whether the process a token names still runs (a malformed token never does)."""
    pid, _, start = token.partition("-")
    if not (pid.isdigit() and start.isdigit()):
        return False
    return ProcessIdentity(int(pid), int(start)).is_alive()

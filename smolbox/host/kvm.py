"""Probe whether KVM can really run a guest here, by running one.

Why a probe and not ``os.path.exists("/dev/kvm")``: on the project's machines
``/dev/kvm`` opens and ``KVM_CREATE_VM`` succeeds, yet any real guest dies with
"KVM internal error" at a ``lock cmpxchg16b`` or crawls ~1000x slower (nested,
paravirtual KVM). So the probe does what a guest kernel does early on: create a
VM and vCPU, set CPUID, enter 64-bit long mode on identity-mapped page tables,
run ``lock cmpxchg16b`` and a million-iteration loop, then HLT. KVM is usable
only if the vCPU exits with HLT, with the loop finished, within the time limit.

Why in a child process: a broken KVM can wedge the calling thread inside
``KVM_RUN``; a child can be killed, the engine cannot. The child runs this file as
a script (``python -I -S kvm.py``), so it imports only the standard library and
starts fast. The 0.5 s limit applies to the guest run itself (``setitimer``
interrupts ``KVM_RUN``); the parent's own deadline adds room for interpreter
start-up so a loaded host is not misread as "KVM too slow".

Structures and ioctl numbers follow ``linux/kvm.h`` (x86-64).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["GUEST_RUN_LIMIT_S", "KVMProbeResult", "probe_kvm"]

GUEST_RUN_LIMIT_S = 0.5
_STARTUP_ALLOWANCE_S = 5.0
KVM_DEVICE = "/dev/kvm"


@dataclass(frozen=True)
class KVMProbeResult:
    """The probe's answer; ``reason`` says why in words a user can act on."""

    usable: bool
    reason: str
    elapsed_s: float


# ---------------------------------------------------------------- linux/kvm.h

_KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_KVMIO << 8) | nr


class _UserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("guest_phys_addr", ctypes.c_uint64), ("memory_size", ctypes.c_uint64),
                ("userspace_addr", ctypes.c_uint64)]


class _Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("selector", ctypes.c_uint16), ("type", ctypes.c_uint8),
                ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8), ("db", ctypes.c_uint8),
                ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8),
                ("padding", ctypes.c_uint8)]


class _DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16),
                ("padding", ctypes.c_uint16 * 3)]


class _Sregs(ctypes.Structure):
    _fields_ = [("cs", _Segment), ("ds", _Segment), ("es", _Segment), ("fs", _Segment),
                ("gs", _Segment), ("ss", _Segment), ("tr", _Segment), ("ldt", _Segment),
                ("gdt", _DTable), ("idt", _DTable),
                ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
                ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class _Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15", "rip", "rflags")]


class _CpuidEntry2(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32),
                ("ecx", ctypes.c_uint32), ("edx", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 3)]


_CPUID2_HEADER = 8  # struct kvm_cpuid2 { __u32 nent; __u32 padding; entries[] }
assert ctypes.sizeof(_Sregs) == 312 and ctypes.sizeof(_Regs) == 144
assert ctypes.sizeof(_CpuidEntry2) == 40 and ctypes.sizeof(_UserspaceMemoryRegion) == 32

KVM_GET_API_VERSION = _ioc(0, 0x00, 0)
KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_GET_SUPPORTED_CPUID = _ioc(3, 0x05, _CPUID2_HEADER)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(1, 0x46, ctypes.sizeof(_UserspaceMemoryRegion))
KVM_RUN = _ioc(0, 0x80, 0)
KVM_GET_REGS = _ioc(2, 0x81, ctypes.sizeof(_Regs))
KVM_SET_REGS = _ioc(1, 0x82, ctypes.sizeof(_Regs))
KVM_GET_SREGS = _ioc(2, 0x83, ctypes.sizeof(_Sregs))
KVM_SET_SREGS = _ioc(1, 0x84, ctypes.sizeof(_Sregs))
KVM_SET_CPUID2 = _ioc(1, 0x90, _CPUID2_HEADER)

KVM_EXIT_HLT = 5
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17
_EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 4: "DEBUG", 5: "HLT", 6: "MMIO",
               8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR"}

# ------------------------------------------------------------------ the guest

_MEM_SIZE = 0x200000          # 2 MiB: one large page, identity mapped
_PML4, _PDPT, _PD = 0x1000, 0x2000, 0x3000
_CODE = 0x4000
_SCRATCH = 0x8000             # 16-byte aligned operand of cmpxchg16b
_LOOPS = 1_000_000
_GUEST_CODE = b"".join([
    b"\xbf" + struct.pack("<I", _SCRATCH),  # mov edi, SCRATCH
    b"\x31\xc0\x31\xd2\x31\xdb\x31\xc9",    # xor eax,eax; xor edx,edx; xor ebx,ebx; xor ecx,ecx
    b"\xf0\x48\x0f\xc7\x0f",                # lock cmpxchg16b [rdi]
    b"\xb9" + struct.pack("<I", _LOOPS),    # mov ecx, LOOPS
    b"\xff\xc9\x75\xfc",                    # 1: dec ecx; jnz 1b
    b"\xf4",                                # hlt
])

_CR0_PE, _CR0_MP, _CR0_ET, _CR0_NE, _CR0_WP, _CR0_AM, _CR0_PG = (
    1, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 18, 1 << 31)
_CR4_PAE = 1 << 5
_EFER_LME, _EFER_LMA = 1 << 8, 1 << 10
_PTE_P, _PTE_RW, _PTE_PS = 1, 1 << 1, 1 << 7


class _ProbeFailed(Exception):
    """Inside the child: the step that made KVM unusable."""


def _ioctl(fd: int, request: int, arg: int | ctypes.Structure | bytearray, step: str) -> int:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as err:
        raise _ProbeFailed(f"{step} failed: {os.strerror(err.errno or 0)}") from None


def _set_cpuid(kvm_fd: int, vcpu_fd: int) -> None:
    nent = 64
    while True:
        buf = bytearray(_CPUID2_HEADER + nent * ctypes.sizeof(_CpuidEntry2))
        struct.pack_into("<I", buf, 0, nent)
        try:
            fcntl.ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, buf)
            break
        except OSError as err:
            if err.errno == 7 and nent < 4096:  # E2BIG: more entries than room
                nent *= 2
                continue
            raise _ProbeFailed(f"KVM_GET_SUPPORTED_CPUID failed: {os.strerror(err.errno or 0)}"
                               ) from None
    _ioctl(vcpu_fd, KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")


def _long_mode_segment(selector: int, code: bool) -> _Segment:
    return _Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=11 if code else 3,
                    present=1, dpl=0, db=0 if code else 1, s=1, l=1 if code else 0, g=1)


def _enter_long_mode(vcpu_fd: int, memory: mmap.mmap) -> None:
    struct.pack_into("<Q", memory, _PML4, _PDPT | _PTE_P | _PTE_RW)
    struct.pack_into("<Q", memory, _PDPT, _PD | _PTE_P | _PTE_RW)
    struct.pack_into("<Q", memory, _PD, 0 | _PTE_P | _PTE_RW | _PTE_PS)
    memory[_CODE:_CODE + len(_GUEST_CODE)] = _GUEST_CODE

    sregs = _Sregs()
    _ioctl(vcpu_fd, KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
    sregs.cr3 = _PML4
    sregs.cr4 = _CR4_PAE
    sregs.cr0 = _CR0_PE | _CR0_MP | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_AM | _CR0_PG
    sregs.efer = _EFER_LME | _EFER_LMA
    sregs.cs = _long_mode_segment(1 << 3, code=True)
    data = _long_mode_segment(2 << 3, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    _ioctl(vcpu_fd, KVM_SET_SREGS, sregs, "KVM_SET_SREGS (64-bit long mode)")

    regs = _Regs(rflags=2, rip=_CODE, rsp=_MEM_SIZE)
    _ioctl(vcpu_fd, KVM_SET_REGS, regs, "KVM_SET_REGS")


_CMPXCHG16B_AT = _CODE + _GUEST_CODE.index(b"\xf0\x48\x0f\xc7")


def _describe(rip: int) -> str:
    """Where the guest was, in words (the failing instruction matters to a user)."""
    if rip == _CMPXCHG16B_AT:
        return f"at lock cmpxchg16b (rip {rip:#x})"
    return f"at rip {rip:#x}"


def _run_guest(device: str) -> str:
    """Run the probe guest in this process; returns a reason or raises _ProbeFailed."""
    try:
        kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise _ProbeFailed(f"cannot open {device}: {err.strerror}") from None
    version = _ioctl(kvm_fd, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
    if version != 12:
        raise _ProbeFailed(f"unexpected KVM API version {version}")
    vm_fd = _ioctl(kvm_fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM")
    memory = mmap.mmap(-1, _MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    host_addr = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    region = _UserspaceMemoryRegion(slot=0, flags=0, guest_phys_addr=0,
                                    memory_size=_MEM_SIZE, userspace_addr=host_addr)
    _ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
    vcpu_fd = _ioctl(vm_fd, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
    run_size = _ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
    run = mmap.mmap(vcpu_fd, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    _set_cpuid(kvm_fd, vcpu_fd)
    _enter_long_mode(vcpu_fd, memory)

    signal.signal(signal.SIGALRM, lambda *_: None)  # interrupt KVM_RUN, do not die
    signal.setitimer(signal.ITIMER_REAL, GUEST_RUN_LIMIT_S)
    try:
        fcntl.ioctl(vcpu_fd, KVM_RUN, 0)
    except InterruptedError:
        raise _ProbeFailed(
            f"the probe guest did not finish within {GUEST_RUN_LIMIT_S:g} s "
            "(KVM is emulated or far too slow here)") from None
    except OSError as err:
        raise _ProbeFailed(f"KVM_RUN failed: {os.strerror(err.errno or 0)}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    (exit_reason,) = struct.unpack_from("<I", run, 8)
    regs = _Regs()
    _ioctl(vcpu_fd, KVM_GET_REGS, regs, "KVM_GET_REGS")
    where = _describe(regs.rip)
    if exit_reason == KVM_EXIT_INTERNAL_ERROR:
        (suberror,) = struct.unpack_from("<I", run, 32)
        raise _ProbeFailed(f"KVM internal error (suberror {suberror}) {where}: "
                           "KVM cannot run standard guests here")
    if exit_reason != KVM_EXIT_HLT:
        name = _EXIT_NAMES.get(exit_reason, str(exit_reason))
        raise _ProbeFailed(f"the probe guest stopped with exit reason {name} {where}, not HLT")
    if regs.rcx != 0 or regs.rip != _CODE + len(_GUEST_CODE):
        raise _ProbeFailed(f"the probe guest halted early (rip={regs.rip:#x}, rcx={regs.rcx})")
    return "a 64-bit guest ran lock cmpxchg16b and 1e6 loop iterations to HLT"


def _child_main(device: str) -> int:
    """Entry point of the probe child: one JSON line on stdout."""
    start = time.monotonic()
    try:
        reason = _run_guest(device)
        usable = True
    except _ProbeFailed as failed:
        reason, usable = str(failed), False
    result = KVMProbeResult(usable=usable, reason=reason, elapsed_s=time.monotonic() - start)
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    return 0


# --------------------------------------------------------------- parent side


def probe_kvm(device: str = KVM_DEVICE) -> KVMProbeResult:
    """Answer "can KVM really run a guest here?" without risking the caller."""
    start = time.monotonic()
    if not os.path.exists(device):
        return KVMProbeResult(False, f"{device} does not exist (no KVM module or no access)",
                              0.0)
    argv = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), device]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=GUEST_RUN_LIMIT_S + _STARTUP_ALLOWANCE_S)
    except subprocess.TimeoutExpired:
        return KVMProbeResult(False, "the KVM probe process hung and was killed",
                              time.monotonic() - start)
    except OSError as err:
        return KVMProbeResult(False, f"cannot start the KVM probe: {err.strerror}",
                              time.monotonic() - start)
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return KVMProbeResult(bool(data["usable"]), str(data["reason"]),
                              float(data["elapsed_s"]))
    except (IndexError, ValueError, KeyError, TypeError):
        tail = (done.stderr or done.stdout).strip()[-300:]
        how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
               else f"exited with status {done.returncode}")
        return KVMProbeResult(False, f"the KVM probe {how}: {tail or 'no output'}",
                              time.monotonic() - start)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1] if len(sys.argv) > 1 else KVM_DEVICE))

"""One virtual CPU: register state, and ``run()`` returning a typed exit."""
import errno
import mmap
import os
import signal
import struct
import threading

import cffi

from ..errors import KvmError
from .exits import (
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    InterruptedExit,
    IoExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from .ffi import IOCTLS, ffi, ioctl
from .generated import kvm_h

# The signal that kicks a vCPU thread out of KVM_RUN.  Its handler does nothing:
# delivery alone makes the ioctl return EINTR.
KICK_SIGNAL = signal.SIGRTMIN + 3
_kick_lock = threading.Lock()
_kick_installed = False

_KVM_RUN = IOCTLS["KVM_RUN"]

# KVM_RUN is the hottest call: through the variadic declaration cffi (ABI mode) builds
# the call interface anew on every call.  This fixed-argument one is prepared once;
# ioctl's third argument is one machine word either way (x86-64 SysV passes it in rdx).
_run_ffi = cffi.FFI()
_run_ffi.cdef("int ioctl(int fd, unsigned long request, unsigned long arg);")
_libc_run = _run_ffi.dlopen(None)

# The exit's fixed fields, read from the shared kvm_run page in one unpack.
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_AT = ffi.offsetof("struct kvm_run", "exit_reason")
_IO = struct.Struct("<BBHIQ")  # struct kvm_run.io: direction, size, port, count, data_offset
_IO_AT = ffi.offsetof("struct kvm_run", "io")
assert [ffi.offsetof("struct kvm_run", "io", name) - _IO_AT
        for name in ("direction", "size", "port", "count", "data_offset")] == [0, 1, 2, 4, 8]


_KVM_EXIT_IO = kvm_h.KVM_EXIT_IO
_KVM_EXIT_IO_OUT = kvm_h.KVM_EXIT_IO_OUT


def install_kick_handler():
    """Install the no-op handler for KICK_SIGNAL; must run once on the main thread."""
    global _kick_installed
    with _kick_lock:
        if _kick_installed:
            return
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("xvm must create its first VM on the main thread (signal setup)")
        signal.signal(KICK_SIGNAL, _ignore)
        signal.siginterrupt(KICK_SIGNAL, True)
        _kick_installed = True


def _ignore(signum, frame):
    pass


class Vcpu:
    """A vCPU file descriptor and its shared ``kvm_run`` page."""

    def __init__(self, vm, vcpu_id, fd):
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        self._run_map = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_page = memoryview(self._run_map)
        self.run_struct = ffi.from_buffer("struct kvm_run *", self._run_map)
        self.thread_id = None  # pthread id of the thread inside run(), for kick()

    # -- running ------------------------------------------------------------
    def run(self):
        """Enter the guest until the next exit; returns an :class:`~xvm.kvm.exits.Exit`."""
        if _libc_run.ioctl(self.fd, _KVM_RUN, 0) < 0:
            err = _run_ffi.errno
            if err in (errno.EINTR, errno.EAGAIN):
                self.run_struct.immediate_exit = 0
                return InterruptedExit()
            raise KvmError("KVM_RUN", err, f"vCPU {self.id}")
        page = self._run_page
        reason = _EXIT_REASON.unpack_from(page, _EXIT_REASON_AT)[0]
        if reason == _KVM_EXIT_IO:
            direction, size, port, count, offset = _IO.unpack_from(page, _IO_AT)
            return IoExit(port, size, direction == _KVM_EXIT_IO_OUT, count,
                          page[offset : offset + size * count])
        run = self.run_struct
        if reason == kvm_h.KVM_EXIT_MMIO:
            mmio = run.mmio
            data = ffi.buffer(mmio.data, mmio.len)
            return MmioExit(mmio.phys_addr, mmio.len, bool(mmio.is_write), memoryview(data))
        if reason == kvm_h.KVM_EXIT_HLT:
            return HltExit()
        if reason == kvm_h.KVM_EXIT_SHUTDOWN:
            return ShutdownExit()
        if reason == kvm_h.KVM_EXIT_SYSTEM_EVENT:
            return SystemEventExit(run.system_event.type)
        if reason == kvm_h.KVM_EXIT_INTR:
            return InterruptedExit()
        if reason == kvm_h.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            n = min(internal.ndata, len(internal.data))
            return InternalErrorExit(internal.suberror, [internal.data[i] for i in range(n)])
        if reason == kvm_h.KVM_EXIT_FAIL_ENTRY:
            return FailEntryExit(run.fail_entry.hardware_entry_failure_reason)
        return UnknownExit(reason)

    def kick(self):
        """Make a concurrent or the next ``run()`` return InterruptedExit promptly."""
        self.run_struct.immediate_exit = 1
        thread_id = self.thread_id
        if thread_id is not None:
            try:
                signal.pthread_kill(thread_id, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    # -- state --------------------------------------------------------------
    def _get(self, ctype, name):
        value = ffi.new(ctype)
        ioctl(self.fd, name, value)
        return value

    def get_regs(self):
        return self._get("struct kvm_regs *", "KVM_GET_REGS")

    def set_regs(self, regs):
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self):
        return self._get("struct kvm_sregs *", "KVM_GET_SREGS")

    def set_sregs(self, sregs):
        ioctl(self.fd, "KVM_SET_SREGS", sregs)

    def get_fpu(self):
        return self._get("struct kvm_fpu *", "KVM_GET_FPU")

    def set_fpu(self, fpu):
        ioctl(self.fd, "KVM_SET_FPU", fpu)

    def get_xsave(self):
        return self._get("struct kvm_xsave *", "KVM_GET_XSAVE")

    def set_xsave(self, xsave):
        ioctl(self.fd, "KVM_SET_XSAVE", xsave)

    def get_xcrs(self):
        return self._get("struct kvm_xcrs *", "KVM_GET_XCRS")

    def set_xcrs(self, xcrs):
        ioctl(self.fd, "KVM_SET_XCRS", xcrs)

    def get_lapic(self):
        return self._get("struct kvm_lapic_state *", "KVM_GET_LAPIC")

    def set_lapic(self, lapic):
        ioctl(self.fd, "KVM_SET_LAPIC", lapic)

    def get_mp_state(self):
        return self._get("struct kvm_mp_state *", "KVM_GET_MP_STATE").mp_state

    def set_mp_state(self, state):
        ioctl(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def get_vcpu_events(self):
        return self._get("struct kvm_vcpu_events *", "KVM_GET_VCPU_EVENTS")

    def set_vcpu_events(self, events):
        ioctl(self.fd, "KVM_SET_VCPU_EVENTS", events)

    def get_debugregs(self):
        return self._get("struct kvm_debugregs *", "KVM_GET_DEBUGREGS")

    def set_debugregs(self, debugregs):
        ioctl(self.fd, "KVM_SET_DEBUGREGS", debugregs)

    def get_tsc_khz(self):
        """``KVM_GET_TSC_KHZ``: the guest's TSC frequency in kHz."""
        return ioctl(self.fd, "KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz):
        ioctl(self.fd, "KVM_SET_TSC_KHZ", khz)
        self.tsc_scaled = True

    tsc_scaled = False  # set_tsc_khz() was called: the guest TSC is the host's scaled

    def _tsc_offset_attr(self, value):
        attr = ffi.new("struct kvm_device_attr *", {"group": kvm_h.KVM_VCPU_TSC_CTRL,
                                                      "attr": kvm_h.KVM_VCPU_TSC_OFFSET})
        attr.addr = int(ffi.cast("uintptr_t", value))
        return attr

    def get_tsc_offset(self):
        """The ``KVM_VCPU_TSC_OFFSET`` attribute (guest TSC = host TSC, scaled, + offset;
        Linux 5.16+), or None where KVM has no such attribute."""
        value = ffi.new("uint64_t *")
        attr = self._tsc_offset_attr(value)
        try:
            ioctl(self.fd, "KVM_HAS_DEVICE_ATTR", attr)
        except KvmError:
            return None
        ioctl(self.fd, "KVM_GET_DEVICE_ATTR", attr)
        return value[0]

    def set_tsc_offset(self, offset):
        value = ffi.new("uint64_t *", offset & 0xFFFF_FFFF_FFFF_FFFF)
        ioctl(self.fd, "KVM_SET_DEVICE_ATTR", self._tsc_offset_attr(value))

    def set_cpuid(self, cpuid):
        """``KVM_SET_CPUID2`` from a ``struct kvm_cpuid2 *``; kept as :attr:`cpuid`
        (what the guest sees, for snapshots)."""
        ioctl(self.fd, "KVM_SET_CPUID2", cpuid)
        self.cpuid = cpuid

    def cpuid_entries(self):
        """The CPUID set with :meth:`set_cpuid`, as ``(function, index, flags, eax, ebx, ecx,
        edx)`` tuples (empty if none was set)."""
        cpuid = getattr(self, "cpuid", None)
        if cpuid is None:
            return []
        return [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in (cpuid.entries[i] for i in range(cpuid.nent))]

    def get_msrs(self, indices):
        """Read MSRs; returns ``{index: value}`` for those KVM could read."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for entry, index in zip(msrs.entries, indices):
            entry.index = index
        n = ioctl(self.fd, "KVM_GET_MSRS", msrs)
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(n)}

    def set_msrs(self, values, partial=False):
        """Write ``{index: value}``; raises if KVM refused any of them.  ``partial``: returns
        how many KVM wrote instead (it stops at the first it refuses, in order)."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(values), "entries": len(values)})
        for entry, (index, value) in zip(msrs.entries, values.items()):
            entry.index, entry.data = index, value
        n = ioctl(self.fd, "KVM_SET_MSRS", msrs)
        if partial:
            return n
        if n != len(values):
            bad = msrs.entries[n].index
            raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"MSR {bad:#x} refused")

    def close(self):
        if self.fd >= 0:
            self.run_struct = None
            self._run_page.release()
            try:
                self._run_map.close()
            except BufferError:
                pass
            os.close(self.fd)
            self.fd = -1

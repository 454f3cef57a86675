"""The vCPU run loop's common MMIO exits, served in C without returning to Python.

A Linux guest's virtio-mmio driver reads InterruptStatus and writes InterruptACK on
every interrupt: two MMIO exits that the Python run loop would decode into an exit
object and dispatch through the bus.  :class:`FastMmio` lists such registers (guest-
physical address, kind, the C status word behind them) and gives each vCPU a runner
that loops on KVM_RUN in C (``xvm_vcpu_run`` in :mod:`xvm.devices.virtio._build_native`),
serving those exits itself, and returns only for every other exit, which the Python
loop handles as before.  Only an exactly 32-bit access of the register's kind is
served here; any other width, or a write to a read register, takes the Python path
(which checks it and logs the illegal access).

The table is made once, when the vCPUs start (:meth:`.devices.DeviceManager.fast_mmio`):
virtio-mmio windows are placed when the machine is built and never move.
"""
from ..devices.virtio import native as _native_loader
from ..kvm.ffi import IOCTLS
from ..kvm.ffi import ffi as kvm_ffi
from ..kvm.generated import kvm_h

_REASON_AT = kvm_ffi.offsetof("struct kvm_run", "exit_reason")
_MMIO_AT = kvm_ffi.offsetof("struct kvm_run", "mmio")
assert [kvm_ffi.offsetof("struct kvm_run", "mmio", name) - _MMIO_AT
        for name in ("phys_addr", "data", "len", "is_write")] == [0, 8, 16, 20]


class FastMmio:
    """Registers ``(gpa, kind, word)`` served in C (``kind``: ``FAST_*`` of
    :mod:`xvm.devices.virtio.native`); ``word`` is a cffi ``uint32_t *`` of
    the C module, kept alive by whoever owns it (its transport) and by this table."""

    def __init__(self, registers):
        self._native = _native_loader.load()
        if self._native is None:
            raise RuntimeError("the C module is unavailable")
        ffi = self._native.ffi
        gpas = [gpa for gpa, _, _ in registers]
        if len(set(gpas)) != len(gpas):
            raise ValueError("two fast registers at one address")
        self._words = [word for _, _, word in registers]
        self._regs = ffi.new("struct xvm_fast_reg[]", max(1, len(registers)))
        for reg, (gpa, kind, word) in zip(self._regs, registers):
            reg.gpa, reg.kind, reg.word = gpa, kind, word
        self._count = len(registers)
        self._runners = []

    def runner(self, vcpu):
        """A :class:`Runner` entering ``vcpu`` until an exit this table does not serve."""
        runner = Runner(self._native, self._regs, self._count, vcpu)
        self._runners.append(runner)
        return runner

    @property
    def served(self):
        """Exits served in C so far, over every vCPU."""
        return sum(runner.served for runner in self._runners)


class Runner:
    """``runner()`` enters the vCPU and returns 0, the exit left in its kvm_run page, or
    KVM_RUN's errno (EINTR: kicked); the exits of the table's registers in between are
    served in C and counted in :attr:`served`."""

    def __init__(self, native, regs, count, vcpu):
        ffi = native.ffi
        self._regs = regs  # kept alive with the loop that points at them
        self._vcpu = vcpu  # the run page stays mapped while its vCPU is open
        loop = self._loop = ffi.new("struct xvm_run_loop *")
        loop.fd = vcpu.fd
        loop.kvm_run = IOCTLS["KVM_RUN"]
        loop.run = ffi.cast("unsigned char *", int(kvm_ffi.cast("uintptr_t", vcpu.run_struct)))
        loop.reason_at, loop.mmio_at, loop.exit_mmio = _REASON_AT, _MMIO_AT, kvm_h.KVM_EXIT_MMIO
        loop.regs, loop.nregs = regs, count
        self._run = native.lib.xvm_vcpu_run
        self._serve = native.lib.xvm_fast_mmio_serve

    def __call__(self):
        return -self._run(self._loop)

    def serve(self):
        """Serve the exit now in the kvm_run page if it is one of the table's; True if it was."""
        return bool(self._serve(self._loop))

    @property
    def served(self):
        return self._loop.served

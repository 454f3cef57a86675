"""Typed results of ``Vcpu.run()``: one small class per KVM exit reason.

Each exit is a view on the vCPU's shared ``kvm_run`` page and is valid only
until the next ``run()``.  Data for an I/O or MMIO read is written back by
assigning to ``exit.data`` (a memoryview into that page).
"""
from .generated import kvm_h


class Exit:
    __slots__ = ()
    reason = None

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class IoExit(Exit):
    """Port I/O (KVM_EXIT_IO): ``count`` accesses of ``size`` bytes at ``port``."""

    __slots__ = ("port", "size", "is_write", "count", "data")
    reason = kvm_h.KVM_EXIT_IO

    def __init__(self, port, size, is_write, count, data):
        self.port, self.size, self.is_write, self.count, self.data = port, size, is_write, count, data


class MmioExit(Exit):
    """An access to guest-physical memory with no RAM behind it (KVM_EXIT_MMIO)."""

    __slots__ = ("address", "size", "is_write", "data")
    reason = kvm_h.KVM_EXIT_MMIO

    def __init__(self, address, size, is_write, data):
        self.address, self.size, self.is_write, self.data = address, size, is_write, data


class HltExit(Exit):
    """HLT without an in-kernel irqchip."""

    __slots__ = ()
    reason = kvm_h.KVM_EXIT_HLT


class ShutdownExit(Exit):
    """Triple fault: the x86 way to reset the machine."""

    __slots__ = ()
    reason = kvm_h.KVM_EXIT_SHUTDOWN


class SystemEventExit(Exit):
    """PSCI-style system event (KVM_SYSTEM_EVENT_SHUTDOWN / RESET / CRASH)."""

    __slots__ = ("type",)
    reason = kvm_h.KVM_EXIT_SYSTEM_EVENT

    def __init__(self, type):
        self.type = type


class InterruptedExit(Exit):
    """KVM_RUN returned EINTR: the vCPU thread was kicked (or immediate_exit was set)."""

    __slots__ = ()
    reason = kvm_h.KVM_EXIT_INTR


class InternalErrorExit(Exit):
    """KVM could not continue (e.g. emulation failure); ``suberror`` says why."""

    __slots__ = ("suberror", "detail")
    reason = kvm_h.KVM_EXIT_INTERNAL_ERROR

    def __init__(self, suberror, detail):
        self.suberror, self.detail = suberror, detail

    def describe(self):
        names = {
            kvm_h.KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
            kvm_h.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
            kvm_h.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
        }
        text = names.get(self.suberror, f"suberror {self.suberror}")
        if self.detail:
            text += " (" + " ".join(f"{d:#x}" for d in self.detail) + ")"
        return text


class FailEntryExit(Exit):
    """The CPU refused to enter the guest (invalid guest state)."""

    __slots__ = ("hardware_reason",)
    reason = kvm_h.KVM_EXIT_FAIL_ENTRY

    def __init__(self, hardware_reason):
        self.hardware_reason = hardware_reason


class UnknownExit(Exit):
    """Any other exit reason; ``code`` is the raw KVM_EXIT_* value."""

    __slots__ = ("code",)

    def __init__(self, code):
        self.code = code


EXIT_NAMES = {
    value: name for name, value in vars(kvm_h).items() if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

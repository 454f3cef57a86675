"""The whole state of a machine as plain, versioned data (:class:`MachineState`).

``Machine.save_state()`` takes it from a paused machine; the builder
(``build_machine(..., state=, memory=)``) makes a machine from the same
configuration and restores it in place instead of loading a kernel.  Guest RAM
is not part of it (the snapshot file and the migration stream carry RAM their
own way).

The kernel's structs (``struct kvm_regs``, ``kvm_sregs``, ``kvm_xsave``,
``kvm_lapic_state``, ``kvm_irqchip``, ``kvm_pit_state2`` ...) are kept as their
raw bytes: they are the kernel's stable ABI, and a size check on restore
catches a layout this build does not know.  MSRs are kept by index, for every
index in KVM's ``KVM_GET_MSR_INDEX_LIST`` that the vCPU can read.

Every state class has ``save() -> dict`` of JSON values and
``restore(dict) -> state``; the serializer lives elsewhere
(:mod:`xvm.migration.snapshot`).
"""
import struct
import threading
import time
import weakref
from dataclasses import asdict, dataclass

from ..acpi.pm import AcpiPmState
from ..devices.block.persist import BlockState
from ..devices.legacy.persist import I8042State, SerialState
from ..devices.net.persist import NetState
from ..devices.pci.persist import PciHostState
from ..devices.virtio.persist import VirtioMmioState
from ..devices.virtio.pci import VirtioPciState
from ..errors import KvmError, StateError
from ..kvm.ffi import ffi, ioctl
from ..kvm.generated import kvm_h

STATE_VERSION = 1

# MSRs KVM lists but that must not be written back as plain values.
_MSR_TSC_DEADLINE = 0x6E0  # restored after the LAPIC by KVM_SET_MSRS ordering below
MSR_IA32_TSC = 0x10
# kvmclock's per-vCPU time page: bit 0 enables it, the rest is its guest-physical address
# (Documentation/virt/kvm/x86/msr.rst); struct pvclock_vcpu_time_info.
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
MSR_KVM_SYSTEM_TIME = 0x12
_U64 = (1 << 64) - 1
TSC_SLACK_NS = 1_000_000  # a TSC read back this far from the written value was not set
_PVCLOCK = struct.Struct("<IIQQIbBxx")  # version, pad, tsc_timestamp, system_time, mul, shift, flags
# Paravirtual MSRs some KVM backends accept but leave out of KVM_GET_MSR_INDEX_LIST: PVM's
# (0x4b564d10.., the "virtual IF" page and friends of a PVM guest).  Probed on save; on
# restore the read-only ones among them (PVM's signature) may be refused.
EXTRA_MSRS = tuple(range(0x4B56_4D08, 0x4B56_4D20))

# (attribute name, ctype, get, set) of each per-vCPU struct kept as bytes, in restore order.
_VCPU_STRUCTS = (
    ("regs", "struct kvm_regs", "get_regs", "set_regs"),
    ("sregs", "struct kvm_sregs", "get_sregs", "set_sregs"),
    ("fpu", "struct kvm_fpu", "get_fpu", "set_fpu"),
    ("xsave", "struct kvm_xsave", "get_xsave", "set_xsave"),
    ("xcrs", "struct kvm_xcrs", "get_xcrs", "set_xcrs"),
    ("debugregs", "struct kvm_debugregs", "get_debugregs", "set_debugregs"),
    ("lapic", "struct kvm_lapic_state", "get_lapic", "set_lapic"),
    ("events", "struct kvm_vcpu_events", "get_vcpu_events", "set_vcpu_events"),
)
IRQCHIPS = (kvm_h.KVM_IRQCHIP_PIC_MASTER, kvm_h.KVM_IRQCHIP_PIC_SLAVE, kvm_h.KVM_IRQCHIP_IOAPIC)


def _bytes_of(cdata, ctype):
    return bytes(ffi.buffer(cdata, ffi.sizeof(ctype)))


def _cdata_of(data, ctype, what):
    size = ffi.sizeof(ctype)
    if len(data) != size:
        raise StateError(f"{what}: {len(data)} bytes, but this host's {ctype} has {size}")
    value = ffi.new(ctype + " *")
    ffi.memmove(value, data, size)
    return value


def _hex(data):
    return data.hex()


@dataclass(frozen=True)
class VcpuState:
    """One vCPU: every register set KVM exposes, its LAPIC, MSRs and pending events."""

    id: int
    regs: bytes
    sregs: bytes
    fpu: bytes
    xsave: bytes
    xcrs: bytes
    debugregs: bytes
    lapic: bytes
    events: bytes
    mp_state: int
    tsc_khz: int
    msrs: tuple  # of (index, value), in KVM's list order
    # The guest's kvmclock (ns) at the moment its TSC (MSR_IA32_TSC in ``msrs``) was read: the
    # TSC is restored relative to the restored clock, so that the two stay in step (a guest
    # whose TSC and kvmclock drift apart marks its TSC unstable).  None in older states.
    tsc_clock: object = None

    def save(self):
        out = {"id": self.id, "mp_state": self.mp_state, "tsc_khz": self.tsc_khz,
               "msrs": [[i, v] for i, v in self.msrs]}
        if self.tsc_clock is not None:
            out["tsc_clock"] = self.tsc_clock
        for name, *_ in _VCPU_STRUCTS:
            out[name] = _hex(getattr(self, name))
        return out

    @classmethod
    def restore(cls, data):
        blobs = {name: bytes.fromhex(data[name]) for name, *_ in _VCPU_STRUCTS}
        tsc_clock = data.get("tsc_clock")
        return cls(id=data["id"], mp_state=data["mp_state"], tsc_khz=data["tsc_khz"],
                   msrs=tuple((int(i), int(v)) for i, v in data["msrs"]),
                   tsc_clock=None if tsc_clock is None else int(tsc_clock), **blobs)


# vCPU -> (the indices asked for, those of them KVM_GET_MSRS reads): which MSRs a vCPU can
# read depends on its CPUID and the host, not on what the guest does, so it is found once
# (:func:`probe_msrs`, when the vCPU is made) and the switchover reads them in one ioctl.
_READABLE_MSRS = weakref.WeakKeyDictionary()


def probe_msrs(vcpu, indices):
    """Find which of ``indices`` ``vcpu`` can read and remember it for :func:`read_msrs`
    (done where a vCPU is configured, not while the guest is paused)."""
    read_msrs(vcpu, indices)


def read_msrs(vcpu, indices):
    """``{index: value}`` of every MSR in ``indices`` the vCPU can read (KVM_GET_MSRS stops
    at the first it cannot: that one is skipped and the rest read on).  One ioctl where
    the readable ones are known already (:func:`probe_msrs`); should one of those fail,
    every index is tried again."""
    indices = tuple(indices)
    known = _READABLE_MSRS.get(vcpu)
    if known is not None and known[0] == indices:
        got = vcpu.get_msrs(known[1])
        if len(got) == len(known[1]):
            return got
    values, rest = {}, list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        values.update(got)
        rest = rest[len(got) + 1:]
    _READABLE_MSRS[vcpu] = (indices, tuple(i for i in indices if i in values))
    return values


def msr_indices(msr_index_list):
    """The MSRs a vCPU's state keeps: KVM's list, then the paravirtual ones it leaves out."""
    return list(msr_index_list) + [i for i in EXTRA_MSRS if i not in msr_index_list]


def pvclock_ns(memory, msrs, tsc):
    """The guest's kvmclock at guest TSC ``tsc``, as the guest computes it from its time page
    (``system_time + (tsc - tsc_timestamp) * mul >> 32``, pvclock_scale_delta); None if the
    guest has no kvmclock enabled or its page is mid-update or outside RAM."""
    for index in (MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_SYSTEM_TIME):
        value = msrs.get(index, 0)
        if value & 1:
            break
    else:
        return None
    gpa = value & ~1
    if memory is None or not memory.contains(gpa, _PVCLOCK.size):
        return None
    version, _, stamp, system_time, mul, shift, _ = _PVCLOCK.unpack(memory.read(gpa, _PVCLOCK.size))
    if version & 1:
        return None
    delta = (tsc - stamp) & _U64
    delta = delta >> -shift if shift < 0 else delta << shift
    return system_time + ((delta * mul) >> 32)


def save_vcpu(vcpu, msr_index_list, memory=None):
    """The :class:`VcpuState` of ``vcpu`` (outside KVM_RUN); ``memory`` (guest RAM) to read
    the guest's kvmclock page for :attr:`VcpuState.tsc_clock`."""
    blobs = {name: _bytes_of(getattr(vcpu, get)(), ctype) for name, ctype, get, _ in _VCPU_STRUCTS}
    indices = msr_indices(msr_index_list)
    msrs = read_msrs(vcpu, indices)
    tsc_clock = None
    if MSR_IA32_TSC in msrs:
        # the TSC and the clock at one moment: the TSC read again, the clock at once after
        msrs[MSR_IA32_TSC] = vcpu.get_msrs([MSR_IA32_TSC])[MSR_IA32_TSC]
        tsc_clock = pvclock_ns(memory, msrs, msrs[MSR_IA32_TSC])
        if tsc_clock is None:
            tsc_clock = vcpu.vm.get_clock().clock
    return VcpuState(id=vcpu.id, mp_state=vcpu.get_mp_state(), tsc_khz=vcpu.get_tsc_khz(),
                     msrs=tuple((i, msrs[i]) for i in indices if i in msrs), tsc_clock=tsc_clock, **blobs)


def restore_vcpu(vcpu, state):
    """Load ``state`` into ``vcpu`` (its CPUID already set, as at boot).

    The order follows what KVM needs: the TSC frequency first, the special
    registers (EFER, CR0/CR4) before the MSRs and XSAVE that depend on them,
    the LAPIC before the TSC-deadline MSR, pending events last.  The TSC itself and
    the TSC-deadline MSR are left to :func:`restore_tsc`, once the VM's clock is set.
    """
    if state.tsc_khz and vcpu.get_tsc_khz() != state.tsc_khz:
        try:
            vcpu.set_tsc_khz(state.tsc_khz)
        except Exception:
            raise StateError(f"vCPU {vcpu.id}: this host cannot run the guest's TSC at "
                             f"{state.tsc_khz} kHz") from None
    cdata = {name: _cdata_of(getattr(state, name), ctype, f"vCPU {state.id} {name}")
             for name, ctype, *_ in _VCPU_STRUCTS}
    vcpu.set_mp_state(state.mp_state)
    vcpu.set_sregs(cdata["sregs"])
    vcpu.set_regs(cdata["regs"])
    vcpu.set_fpu(cdata["fpu"])
    vcpu.set_xsave(cdata["xsave"])
    vcpu.set_xcrs(cdata["xcrs"])
    vcpu.set_debugregs(cdata["debugregs"])
    vcpu.set_lapic(cdata["lapic"])
    msrs = dict(state.msrs)
    msrs.pop(_MSR_TSC_DEADLINE, None)
    msrs.pop(MSR_IA32_TSC, None)
    extra = {i: msrs.pop(i) for i in EXTRA_MSRS if i in msrs}
    if msrs:
        vcpu.set_msrs(msrs)
    rest = list(extra.items())
    while rest:  # in one KVM_SET_MSRS but for those refused (fine if they read back as saved)
        written = vcpu.set_msrs(dict(rest), partial=True)
        if written == len(rest):
            break
        index, value = rest[written]
        if vcpu.get_msrs([index]).get(index) != value:
            raise StateError(f"vCPU {vcpu.id}: KVM refused MSR {index:#x} = {value:#x}")
        rest = rest[written + 1:]
    vcpu.set_vcpu_events(cdata["events"])


def restore_tsc(vcpu, state):
    """Write the vCPU's TSC, then its TSC deadline, after :func:`restore_vm` set the clock;
    returns how far (ns) the TSC then runs ahead of what was written (0 where KVM sets
    it; PVM hosts ignore the write and the guest sees the host's TSC).

    The TSC goes on from the saved value by as much as the VM's kvmclock has gone on
    since the moment it was read (:attr:`VcpuState.tsc_clock`), so the guest's TSC and
    kvmclock keep the offset they had (a guest whose two clocks disagree by a fraction of
    a millisecond marks its TSC unstable).  Where KVM reads the clock and the host TSC at
    one instant (KVM_CLOCK_HOST_TSC) and has the vCPU's TSC offset attribute, the offset is
    then corrected from that pair, exactly (Documentation/virt/kvm/devices/vcpu.rst, 4.1);
    otherwise the time between reading the clock and writing the MSR is the error.
    KVM treats host writes within a second of each other as one synchronized TSC (its
    kvm_synchronize_tsc), so the MSR is written exactly once.
    """
    msrs = dict(state.msrs)
    tsc = msrs.get(MSR_IA32_TSC)
    ahead_ns = 0
    if tsc is not None:
        khz = state.tsc_khz or vcpu.get_tsc_khz()
        if state.tsc_clock is not None and khz:
            clock = vcpu.vm.get_clock().clock
            read_at = time.monotonic_ns()
            elapsed_ns = max(clock - state.tsc_clock, 0)
            tsc += (elapsed_ns + time.monotonic_ns() - read_at) * khz // 1_000_000  # to the write
        tsc &= _U64
        started = time.monotonic_ns()
        vcpu.set_msrs({MSR_IA32_TSC: tsc})
        if state.tsc_clock is not None and khz:
            read_back = vcpu.get_msrs([MSR_IA32_TSC]).get(MSR_IA32_TSC, tsc)
            # less the time the write and the read took: what is left, the TSC did not take
            ahead_ns = (read_back - tsc) * 1_000_000 // khz - (time.monotonic_ns() - started)
            if ahead_ns <= TSC_SLACK_NS and not vcpu.tsc_scaled:
                _correct_tsc_offset(vcpu, state, khz)
    deadline = msrs.get(_MSR_TSC_DEADLINE)
    if deadline is not None:
        vcpu.set_msrs({_MSR_TSC_DEADLINE: deadline})
    return ahead_ns


def _correct_tsc_offset(vcpu, state, khz):
    """Set the TSC offset so that the guest TSC at the instant of one KVM_GET_CLOCK is the
    saved TSC plus the clock's progress since it was saved (unscaled TSC only)."""
    offset = vcpu.get_tsc_offset()
    if offset is None:
        return
    clock = vcpu.vm.get_clock()
    if not clock.flags & kvm_h.KVM_CLOCK_HOST_TSC:
        return
    guest_tsc = (clock.host_tsc + offset) & _U64
    want = dict(state.msrs)[MSR_IA32_TSC] + max(clock.clock - state.tsc_clock, 0) * khz // 1_000_000
    vcpu.set_tsc_offset(offset + want - guest_tsc)


def _tsc_then_clock(vm, vcpu, state):
    """The first vCPU's TSC written as saved, then the kvmclock set to what it was at that
    TSC, as of the instant of the write (KVM_SET_CLOCK with KVM_CLOCK_REALTIME: the kernel
    adds the real time elapsed since), so that no delay of this thread between the two
    (another thread holding the GIL for milliseconds, say) comes between them (older KVM,
    without that flag: the elapsed time is added here).  False where the host ignores the
    TSC write (PVM): the caller then has the clock follow the TSC (:func:`restore_tsc`)."""
    msrs = dict(state.msrs)
    tsc = msrs.get(MSR_IA32_TSC)
    if tsc is None or state.tsc_clock is None or not state.tsc_khz:
        return False
    request = ffi.new("struct kvm_msrs *", {"nmsrs": 1, "entries": 1})
    request.entries[0].index, request.entries[0].data = MSR_IA32_TSC, tsc
    started = time.monotonic_ns()
    written_at = time.clock_gettime_ns(time.CLOCK_REALTIME)
    if ioctl(vcpu.fd, "KVM_SET_MSRS", request) != 1:
        return False
    read_back = vcpu.get_msrs([MSR_IA32_TSC]).get(MSR_IA32_TSC, tsc)
    if (read_back - tsc) * 1_000_000 // state.tsc_khz - (time.monotonic_ns() - started) > TSC_SLACK_NS:
        return False  # not taken: the clock must follow the host's TSC instead
    try:
        vm.set_clock(ffi.new("struct kvm_clock_data *", {"clock": state.tsc_clock, "flags": kvm_h.KVM_CLOCK_REALTIME,
                                                           "realtime": written_at}))
    except KvmError:  # older KVM: the time since the write counted here (the TSC is written once)
        since = max(time.clock_gettime_ns(time.CLOCK_REALTIME) - written_at, 0)
        vm.set_clock(ffi.new("struct kvm_clock_data *", {"clock": state.tsc_clock + since}))
    deadline = msrs.get(_MSR_TSC_DEADLINE)
    if deadline is not None:
        vcpu.set_msrs({_MSR_TSC_DEADLINE: deadline})
    return True


class PendingTimekeeping:
    """A restored machine's kvmclock and TSCs, set as late as can be: each vCPU's in its own
    thread just before its first KVM_RUN (:meth:`apply`; the clock with the first), or all at
    once if the machine's state is taken before then (:meth:`apply_all`).

    KVM anchors the guest's clock page at a vCPU's entry, and where the host's kvmclock and
    TSC drift apart (no master clock: a nested host, 1-3 % measured in the HVM test host),
    the longer a TSC has been set before that entry, the further the guest's kvmclock jumps
    from its TSC.  Where the host does not let the TSC be set (it runs on from the host's),
    the kvmclock is moved on by as much, so the two still agree."""

    def __init__(self, vm, vcpus, clock):
        self.vm = vm
        self.clock = clock
        self._pending = {state.id: state for state in vcpus}
        self._clock_set = False
        self._lock = threading.Lock()

    def apply(self, vcpu):
        with self._lock:
            state = self._pending.pop(vcpu.id, None)
            if state is None:
                return
            if not self._clock_set:
                self.vm.set_clock(ffi.new("struct kvm_clock_data *", {"clock": self.clock}))
                if _tsc_then_clock(self.vm, vcpu, state):
                    self._clock_set = True
                    return
            ahead_ns = restore_tsc(vcpu, state)
            if not self._clock_set and ahead_ns > TSC_SLACK_NS:
                self.vm.set_clock(ffi.new("struct kvm_clock_data *", {"clock": self.vm.get_clock().clock + ahead_ns}))
            self._clock_set = True

    def apply_all(self):
        for vcpu in self.vm.vcpus:
            self.apply(vcpu)


@dataclass(frozen=True)
class VmState:
    """The VM-wide in-kernel devices: PIC master and slave, IOAPIC, PIT, KVM clock."""

    irqchips: tuple  # of bytes (struct kvm_irqchip), in IRQCHIPS order
    pit: bytes  # struct kvm_pit_state2
    clock: int  # kvmclock nanoseconds

    def save(self):
        return {"irqchips": [_hex(c) for c in self.irqchips], "pit": _hex(self.pit), "clock": self.clock}

    @classmethod
    def restore(cls, data):
        return cls(tuple(bytes.fromhex(c) for c in data["irqchips"]), bytes.fromhex(data["pit"]),
                   int(data["clock"]))


def save_vm(vm, vcpus=()):
    """The VM's state; ``vcpus`` (their :class:`VcpuState`, taken first): the clock is the
    latest the guest saw when its TSCs were read, so that it resumes where the guest left
    it (a later KVM_GET_CLOCK would count the time the saving itself took)."""
    seen = [v.tsc_clock for v in vcpus if v.tsc_clock is not None]
    clock = max(seen) if seen else vm.get_clock().clock
    return VmState(tuple(_bytes_of(vm.get_irqchip(chip), "struct kvm_irqchip") for chip in IRQCHIPS),
                   _bytes_of(vm.get_pit2(), "struct kvm_pit_state2"), clock)


def restore_vm(vm, state):
    if len(state.irqchips) != len(IRQCHIPS):
        raise StateError(f"the state has {len(state.irqchips)} interrupt controllers, not {len(IRQCHIPS)}")
    for data in state.irqchips:
        vm.set_irqchip(_cdata_of(data, "struct kvm_irqchip", "irqchip"))
    vm.set_pit2(_cdata_of(state.pit, "struct kvm_pit_state2", "PIT"))
    clock = ffi.new("struct kvm_clock_data *", {"clock": state.clock})
    vm.set_clock(clock)


@dataclass(frozen=True)
class SlotState:
    """One virtio device as the machine wired it, with its transport's state."""

    name: str
    kind: str  # "mmio" or "pci"
    device_id: int  # the virtio device type
    device: object  # BlockState or NetState
    transport: object  # VirtioMmioState or VirtioPciState

    _DEVICES = {"block": BlockState, "net": NetState}
    _TRANSPORTS = {"mmio": VirtioMmioState, "pci": VirtioPciState}

    def save(self):
        kind = "block" if isinstance(self.device, BlockState) else "net"
        return {"name": self.name, "kind": self.kind, "device_id": self.device_id,
                "device_kind": kind, "device": self.device.save(), "transport": self.transport.save()}

    @classmethod
    def restore(cls, data):
        return cls(data["name"], data["kind"], data["device_id"],
                   cls._DEVICES[data["device_kind"]].restore(data["device"]),
                   cls._TRANSPORTS[data["kind"]].restore(data["transport"]))


@dataclass(frozen=True)
class DevicesState:
    serial: SerialState
    i8042: I8042State
    acpi_pm: AcpiPmState
    pci: PciHostState
    slots: tuple  # of SlotState, in the order the builder adds them

    def save(self):
        return {"serial": self.serial.save(), "i8042": self.i8042.save(), "acpi_pm": asdict(self.acpi_pm),
                "pci": self.pci.save(), "slots": [s.save() for s in self.slots]}

    @classmethod
    def restore(cls, data):
        return cls(SerialState.restore(data["serial"]), I8042State.restore(data["i8042"]),
                   AcpiPmState(**data["acpi_pm"]), PciHostState.restore(data["pci"]),
                   tuple(SlotState.restore(s) for s in data["slots"]))


@dataclass(frozen=True)
class MachineState:
    """Everything guest-visible but RAM: vCPUs, the in-kernel chips and clock, every device.

    ``memory`` is the RAM layout, ``((gpa, size), ...)``, for the check that a
    configuration fits.
    """

    vcpus: tuple  # of VcpuState
    vm: VmState
    devices: DevicesState
    memory: tuple  # of (gpa, size)
    version: int = STATE_VERSION

    def save(self):
        return {"version": self.version, "vcpus": [v.save() for v in self.vcpus], "vm": self.vm.save(),
                "devices": self.devices.save(), "memory": [[g, s] for g, s in self.memory]}

    @classmethod
    def restore(cls, data):
        return cls(tuple(VcpuState.restore(v) for v in data["vcpus"]), VmState.restore(data["vm"]),
                   DevicesState.restore(data["devices"]),
                   tuple((int(g), int(s)) for g, s in data["memory"]), int(data["version"]))

    def misfit(self, config):
        """Why this state cannot be loaded into a machine built from ``config`` (None if it can)."""
        from . import layout

        if len(self.vcpus) != config.vcpus:
            return f"the state has {len(self.vcpus)} vCPU(s), the configuration {config.vcpus}"
        if tuple(self.memory) != tuple(layout.ram_ranges(config.memory_bytes)):
            size = sum(s for _, s in self.memory)
            return f"the state has {size >> 20} MiB of RAM, the configuration {config.memory_mib} MiB"
        want = [("block", d.path) for d in config.disks] + [("net", None) for _ in config.nics]
        have = [("block" if isinstance(s.device, BlockState) else "net",
                 s.device.path if isinstance(s.device, BlockState) else None) for s in self.devices.slots]
        if [k for k, _ in want] != [k for k, _ in have]:
            return (f"the state has devices {[k for k, _ in have]}, the configuration "
                    f"{[k for k, _ in want]}")
        kinds = {s.kind for s in self.devices.slots}
        if kinds and kinds != {config.virtio_transport}:
            return f"the state's virtio transport is {kinds.pop()}, the configuration's {config.virtio_transport}"
        return None

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
from dataclasses import asdict, dataclass

from ..acpi.pm import AcpiPmState
from ..devices.block.persist import BlockState
from ..devices.legacy.persist import I8042State, SerialState
from ..devices.net.persist import NetState
from ..devices.pci.persist import PciHostState
from ..devices.virtio.persist import VirtioMmioState
from ..devices.virtio.pci import VirtioPciState
from ..errors import KvmError, StateError
from ..kvm.ffi import ffi
from ..kvm.generated import kvm_h

STATE_VERSION = 1

# MSRs KVM lists but that must not be written back as plain values.
_MSR_TSC_DEADLINE = 0x6E0  # restored after the LAPIC by KVM_SET_MSRS ordering below
MSR_IA32_TSC = 0x10
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

    def save(self):
        out = {"id": self.id, "mp_state": self.mp_state, "tsc_khz": self.tsc_khz,
               "msrs": [[i, v] for i, v in self.msrs]}
        for name, *_ in _VCPU_STRUCTS:
            out[name] = _hex(getattr(self, name))
        return out

    @classmethod
    def restore(cls, data):
        blobs = {name: bytes.fromhex(data[name]) for name, *_ in _VCPU_STRUCTS}
        return cls(id=data["id"], mp_state=data["mp_state"], tsc_khz=data["tsc_khz"],
                   msrs=tuple((int(i), int(v)) for i, v in data["msrs"]), **blobs)


def read_msrs(vcpu, indices):
    """``{index: value}`` of every MSR in ``indices`` the vCPU can read (KVM_GET_MSRS stops
    at the first it cannot: that one is skipped and the rest read on)."""
    values, rest = {}, list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        values.update(got)
        rest = rest[len(got) + 1:]
    return values


def save_vcpu(vcpu, msr_indices):
    """The :class:`VcpuState` of ``vcpu`` (outside KVM_RUN)."""
    blobs = {name: _bytes_of(getattr(vcpu, get)(), ctype) for name, ctype, get, _ in _VCPU_STRUCTS}
    indices = list(msr_indices) + [i for i in EXTRA_MSRS if i not in msr_indices]
    msrs = read_msrs(vcpu, indices)
    return VcpuState(id=vcpu.id, mp_state=vcpu.get_mp_state(), tsc_khz=vcpu.get_tsc_khz(),
                     msrs=tuple((i, msrs[i]) for i in indices if i in msrs), **blobs)


def restore_vcpu(vcpu, state):
    """Load ``state`` into ``vcpu`` (its CPUID already set, as at boot).

    The order follows what KVM needs: the TSC frequency first, the special
    registers (EFER, CR0/CR4) before the MSRs and XSAVE that depend on them,
    the LAPIC before the TSC-deadline MSR, pending events last.
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
    deadline = msrs.pop(_MSR_TSC_DEADLINE, None)
    extra = {i: msrs.pop(i) for i in EXTRA_MSRS if i in msrs}
    if msrs:
        vcpu.set_msrs(msrs)
    for index, value in extra.items():
        try:
            vcpu.set_msrs({index: value})
        except KvmError:
            if vcpu.get_msrs([index]).get(index) != value:
                raise StateError(f"vCPU {vcpu.id}: KVM refused MSR {index:#x} = {value:#x}") from None
    if deadline is not None:
        vcpu.set_msrs({_MSR_TSC_DEADLINE: deadline})
    vcpu.set_vcpu_events(cdata["events"])


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


def save_vm(vm):
    return VmState(tuple(_bytes_of(vm.get_irqchip(chip), "struct kvm_irqchip") for chip in IRQCHIPS),
                   _bytes_of(vm.get_pit2(), "struct kvm_pit_state2"), vm.get_clock().clock)


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

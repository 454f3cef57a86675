"""One KVM virtual machine: memory slots, irqchip, irqfd/ioeventfd, routing."""
import os

from ..errors import ConfigError
from .ffi import ffi, ioctl
from .generated import kvm_h

# Where KVM may put the TSS and identity page table it needs for real mode on
# Intel hosts; both must lie in the 32-bit MMIO hole, outside guest RAM.
TSS_ADDRESS = 0xFFFB_D000
IDENTITY_MAP_ADDRESS = 0xFFFB_C000


class MsiRoute:
    """A GSI routed to a message-signalled interrupt."""

    __slots__ = ("gsi", "address", "data")

    def __init__(self, gsi, address, data):
        self.gsi, self.address, self.data = gsi, address, data


class IrqchipRoute:
    """A GSI routed to a pin of the in-kernel PIC or IOAPIC."""

    __slots__ = ("gsi", "irqchip", "pin")

    def __init__(self, gsi, irqchip, pin):
        self.gsi, self.irqchip, self.pin = gsi, irqchip, pin


class Vm:
    """A KVM VM file descriptor and what hangs off it."""

    def __init__(self, kvm, fd):
        self.kvm = kvm
        self.fd = fd
        self._slots = {}
        self._addresses = {}  # slot -> host address, to change a slot's flags
        self.vcpus = []

    # -- memory -----------------------------------------------------------
    def set_user_memory_region(self, slot, gpa, size, host_address, flags=0):
        region = ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot,
                "flags": flags,
                "guest_phys_addr": gpa,
                "memory_size": size,
                "userspace_addr": host_address,
            },
        )
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region)
        if size:
            self._slots[slot] = (gpa, size, flags)
            self._addresses[slot] = host_address
        else:
            self._slots.pop(slot, None)
            self._addresses.pop(slot, None)

    def map_memory(self, memory, *, dirty_log=False):
        """Give every region of a :class:`GuestMemory` to the guest, one slot each."""
        flags = kvm_h.KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0
        limit = self.kvm.check_extension("KVM_CAP_NR_MEMSLOTS") or 32
        for region in memory.regions:
            slot = len(self._slots)
            if slot >= limit:
                raise ConfigError(f"guest memory needs more than the host's {limit} memory slots")
            self.set_user_memory_region(slot, region.gpa, region.size, region.host_address, flags)

    def set_dirty_logging(self, on):
        """Turn dirty-page logging on or off for every memory slot, live (KVM lets a slot's
        flags change while vCPUs run); turning it on starts every bitmap empty."""
        for slot, (gpa, size, flags) in list(self._slots.items()):
            new = flags | kvm_h.KVM_MEM_LOG_DIRTY_PAGES if on else flags & ~kvm_h.KVM_MEM_LOG_DIRTY_PAGES
            if new != flags:
                self.set_user_memory_region(slot, gpa, size, self._addresses[slot], new)

    @property
    def slots(self):
        """``{slot: (gpa, size, flags)}`` of every mapped memory slot."""
        return dict(self._slots)

    def get_dirty_log(self, slot):
        """The dirty-page bitmap of ``slot`` since the last call (one bit per 4 KiB page)."""
        gpa, size, flags = self._slots[slot]
        if not flags & kvm_h.KVM_MEM_LOG_DIRTY_PAGES:
            raise ConfigError(f"memory slot {slot} was not mapped with dirty logging")
        pages = size // 4096
        bitmap = ffi.new("uint64_t[]", (pages + 63) // 64)
        log = ffi.new("struct kvm_dirty_log *", {"slot": slot})
        log.dirty_bitmap = bitmap
        ioctl(self.fd, "KVM_GET_DIRTY_LOG", log)
        return bytes(ffi.buffer(bitmap))

    # -- interrupts -------------------------------------------------------
    def set_tss_address(self, address=TSS_ADDRESS):
        ioctl(self.fd, "KVM_SET_TSS_ADDR", address)

    def set_identity_map_address(self, address=IDENTITY_MAP_ADDRESS):
        ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ffi.new("__u64 *", address))

    def create_irqchip(self):
        """In-kernel PIC, IOAPIC and local APICs."""
        ioctl(self.fd, "KVM_CREATE_IRQCHIP")

    def create_pit2(self):
        ioctl(self.fd, "KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *"))

    def get_irqchip(self, chip_id):
        """``KVM_GET_IRQCHIP`` of one in-kernel chip (KVM_IRQCHIP_PIC_MASTER/SLAVE/IOAPIC)."""
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl(self.fd, "KVM_GET_IRQCHIP", chip)
        return chip

    def set_irqchip(self, chip):
        ioctl(self.fd, "KVM_SET_IRQCHIP", chip)

    def get_pit2(self):
        pit = ffi.new("struct kvm_pit_state2 *")
        ioctl(self.fd, "KVM_GET_PIT2", pit)
        return pit

    def set_pit2(self, pit):
        ioctl(self.fd, "KVM_SET_PIT2", pit)

    def irq_line(self, irq, level):
        ioctl(self.fd, "KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def irqfd(self, fd, gsi, *, resample_fd=None):
        """Raise ``gsi`` whenever eventfd ``fd`` is written (level GSIs need ``resample_fd``)."""
        arg = {"fd": fd, "gsi": gsi}
        if resample_fd is not None:
            arg.update(flags=kvm_h.KVM_IRQFD_FLAG_RESAMPLE, resamplefd=resample_fd)
        ioctl(self.fd, "KVM_IRQFD", ffi.new("struct kvm_irqfd *", arg))

    def irqfd_remove(self, fd, gsi):
        arg = {"fd": fd, "gsi": gsi, "flags": kvm_h.KVM_IRQFD_FLAG_DEASSIGN}
        ioctl(self.fd, "KVM_IRQFD", ffi.new("struct kvm_irqfd *", arg))

    def ioeventfd(self, fd, address, length, *, datamatch=None, pio=False, remove=False):
        """Signal eventfd ``fd`` on a guest write to ``address`` instead of exiting.

        ``datamatch`` restricts it to writes of that value; ``pio`` selects I/O
        port space instead of MMIO.
        """
        flags = 0
        if datamatch is not None:
            flags |= kvm_h.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= kvm_h.KVM_IOEVENTFD_FLAG_PIO
        if remove:
            flags |= kvm_h.KVM_IOEVENTFD_FLAG_DEASSIGN
        arg = {"datamatch": datamatch or 0, "addr": address, "len": length, "fd": fd, "flags": flags}
        ioctl(self.fd, "KVM_IOEVENTFD", ffi.new("struct kvm_ioeventfd *", arg))

    def set_gsi_routing(self, routes):
        """Replace the whole GSI routing table with ``routes`` (MsiRoute / IrqchipRoute)."""
        table = ffi.new("struct kvm_irq_routing *", {"nr": len(routes), "entries": len(routes)})
        for entry, route in zip(table.entries, routes):
            entry.gsi = route.gsi
            if isinstance(route, MsiRoute):
                entry.type = kvm_h.KVM_IRQ_ROUTING_MSI
                entry.u.msi.address_lo = route.address & 0xFFFF_FFFF
                entry.u.msi.address_hi = route.address >> 32
                entry.u.msi.data = route.data
            else:
                entry.type = kvm_h.KVM_IRQ_ROUTING_IRQCHIP
                entry.u.irqchip.irqchip = route.irqchip
                entry.u.irqchip.pin = route.pin
        ioctl(self.fd, "KVM_SET_GSI_ROUTING", table)

    def signal_msi(self, address, data):
        msi = {"address_lo": address & 0xFFFF_FFFF, "address_hi": address >> 32, "data": data}
        return ioctl(self.fd, "KVM_SIGNAL_MSI", ffi.new("struct kvm_msi *", msi))

    # -- clock ------------------------------------------------------------
    def get_clock(self):
        clock = ffi.new("struct kvm_clock_data *")
        ioctl(self.fd, "KVM_GET_CLOCK", clock)
        return clock

    def set_clock(self, clock):
        ioctl(self.fd, "KVM_SET_CLOCK", clock)

    # -- vCPUs ------------------------------------------------------------
    def create_vcpu(self, vcpu_id):
        from .vcpu import Vcpu

        vcpu = Vcpu(self, vcpu_id, ioctl(self.fd, "KVM_CREATE_VCPU", vcpu_id))
        self.vcpus.append(vcpu)
        return vcpu

    def close(self):
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

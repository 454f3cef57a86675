"""The devices of a machine: buses, legacy devices, the PCI host bridge and
one list of virtio slots, whichever transport carries each.

The legacy set is fixed (what the ACPI tables promise): COM1, the i8042, the
ACPI PM registers and the POST port.  Virtio devices are added explicitly with
:meth:`DeviceManager.add_virtio` and live in :attr:`DeviceManager.slots`.
"""
import os
from dataclasses import dataclass

from ..acpi import VirtioMmio, build_tables
from ..acpi.pm import PM_BASE, PM_SIZE, SCI_IRQ, AcpiPm
from ..devices.legacy.i8042 import DATA_PORT as I8042_BASE
from ..devices.legacy.i8042 import I8042
from ..devices.legacy.serial import Serial8250
from ..devices.pci import GsiRouter, PciHostBridge
from ..devices.pci import acpi as pci_acpi
from ..devices.virtio.mmio import VirtioMmioDevice
from ..devices.virtio.pci import VirtioPciDevice
from ..errors import ConfigError
from . import layout
from .bus import Bus

COM1_BASE = 0x3F8
COM1_IRQ = 4
POST_PORT = 0x80  # POST codes and, on PVM hosts, the "deliver pending interrupts" doorbell
VIRTIO_TRANSPORTS = ("mmio", "pci")

# IOAPIC inputs above the ISA range, so no legacy device shares them; edge-triggered.
VIRTIO_MMIO_GSIS = tuple(range(16, 24))


@dataclass(eq=False)
class VirtioSlot:
    """One virtio device as the machine wired it: ``kind`` is its transport
    ("mmio" or "pci"), ``base`` its MMIO window (virtio-mmio) or BAR 0
    (virtio-pci), ``gsi`` its interrupt line (-1: MSI-X only)."""

    device: object
    transport: object
    kind: str
    base: int
    gsi: int
    irq_fd: int
    name: str

    def stats(self):
        metrics = getattr(self.device, "metrics", None)
        return {"name": self.name, "transport": self.kind,
                "metrics": metrics.snapshot() if metrics is not None else {}}

    def close(self):
        if self.transport is not None:
            self.transport.close()
        self.device.close()
        if self.irq_fd >= 0:
            os.close(self.irq_fd)
            self.irq_fd = -1


class _IgnoredPort:
    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        pass


class DeviceManager:
    """Every device of one VM.  ``on_reset`` and ``on_poweroff`` are called when
    the guest asks for a reset (i8042) or powers off (ACPI S5)."""

    def __init__(self, vm, memory, *, console_sink, on_reset, on_poweroff, virtio_transport="mmio"):
        if virtio_transport not in VIRTIO_TRANSPORTS:
            raise ConfigError(f"virtio_transport must be 'mmio' or 'pci', not {virtio_transport!r}")
        self.vm = vm
        self.memory = memory
        self.virtio_transport = virtio_transport
        self.pio_bus = Bus("port I/O")
        self.mmio_bus = Bus("MMIO")
        self.slots = []  # VirtioSlot per virtio device, in the order they were added
        self._closed = False

        self.serial = Serial8250(console_sink, lambda level: vm.irq_line(COM1_IRQ, int(level)))
        self.i8042 = I8042(on_reset)
        self.acpi_pm = AcpiPm(sci=lambda level: vm.irq_line(SCI_IRQ, int(level)), on_poweroff=on_poweroff)
        self.pio_bus.register(COM1_BASE, 8, self.serial)
        self.pio_bus.register(I8042_BASE, 5, self.i8042)
        self.pio_bus.register(PM_BASE, PM_SIZE, self.acpi_pm)
        self.pio_bus.register(POST_PORT, 1, _IgnoredPort())
        self.gsi_router = GsiRouter(vm)  # KVM GSI routing: IOAPIC/PIC defaults + MSI vectors
        self.pci = PciHostBridge(self.mmio_bus, window=layout.PCI_MMIO_WINDOW, ecam_base=layout.PCI_ECAM_BASE)
        self.pci.register(self.pio_bus)

    def _of_kind(self, kind):
        return [slot for slot in self.slots if slot.kind == kind]

    # -- virtio -----------------------------------------------------------
    def add_virtio(self, device, name=None):
        """Add ``device`` behind the machine's virtio transport (``virtio_transport``)."""
        if self.virtio_transport == "pci":
            return self.add_virtio_pci(device, name=name)
        return self.add_virtio_mmio(device, name=name)

    def add_virtio_mmio(self, device, name=None):
        """Put ``device`` (a VirtioDevice) behind a virtio-mmio window with its own GSI.

        Queue notifications arrive on KVM ioeventfds and interrupts leave on a
        KVM irqfd, so the data plane never passes through a vCPU thread.
        """
        index = len(self._of_kind("mmio"))
        if index >= len(VIRTIO_MMIO_GSIS):
            device.close()
            raise ConfigError(f"a machine has at most {len(VIRTIO_MMIO_GSIS)} virtio-mmio devices")
        base = layout.VIRTIO_MMIO_BASE + index * layout.VIRTIO_MMIO_SIZE
        gsi = VIRTIO_MMIO_GSIS[index]
        irq_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        slot = VirtioSlot(device, None, "mmio", base, gsi, irq_fd, name or f"virtio-mmio{index}")
        self.slots.append(slot)  # from here on close() releases it
        self.vm.irqfd(irq_fd, gsi)
        slot.transport = VirtioMmioDevice(device, self.memory, irq_fd, name=name)
        self.mmio_bus.register(base, slot.transport.size, slot.transport)
        for queue, fd in enumerate(slot.transport.notify_eventfds()):
            self.vm.ioeventfd(fd, base + slot.transport.notify_offset, 4, datamatch=queue)
        return slot

    def add_virtio_pci(self, device, name=None):
        """Put ``device`` (a VirtioDevice) on PCI bus 0 as a modern virtio-pci function.

        Notifications arrive on KVM ioeventfds (one address per queue, moved with
        BAR 0); interrupts leave on one irqfd per MSI-X vector, whose GSI is routed
        to the message the guest programs in the vector table.  With MSI-X off, INTA#
        of every function shares one level-triggered GSI (the DSDT's _PRT).
        """
        index = len(self._of_kind("pci"))
        slot = VirtioSlot(device, None, "pci", 0, self._pci_intx_gsi(), -1, name or f"virtio-pci{index}")
        self.slots.append(slot)  # from here on close() releases it
        vm = self.vm
        slot.transport = VirtioPciDevice(device, self.memory, router=self.gsi_router, irqfd=vm.irqfd,
                                         irqfd_remove=vm.irqfd_remove, ioeventfd=vm.ioeventfd, name=name,
                                         intx_gsi=slot.gsi if slot.gsi >= 0 else None)
        self.pci.add(slot.transport)
        slot.base = slot.transport.bar_address(0)
        return slot

    def _pci_intx_gsi(self):
        """The GSI INTx of PCI bus 0 shares: the highest IOAPIC input above the ISA
        range that no virtio-mmio device uses (-1 if none is left)."""
        for slot in self._of_kind("pci"):
            if slot.gsi >= 0:
                return slot.gsi
        used = {slot.gsi for slot in self._of_kind("mmio")}
        return next((gsi for gsi in reversed(VIRTIO_MMIO_GSIS) if gsi not in used), -1)

    # -- ACPI -------------------------------------------------------------
    def build_acpi(self, cpus):
        """Write the ACPI tables describing these devices; returns the RSDP's address."""
        return build_tables(
            self.memory, cpus=cpus,
            virtio_mmio=[VirtioMmio(slot.base, slot.transport.size, slot.gsi) for slot in self._of_kind("mmio")],
            extra_tables=[pci_acpi.mcfg(layout.PCI_ECAM_BASE)],
            extra_devices=[pci_acpi.pci_root(layout.PCI_MMIO_WINDOW, prt=[
                               (slot.transport.slot, slot.gsi) for slot in self._of_kind("pci") if slot.gsi >= 0]),
                           pci_acpi.ecam_reservation(layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE)],
        )

    # -- lifecycle --------------------------------------------------------
    def pause(self):
        """Let every virtio device finish its in-flight requests and stop serving."""
        for slot in self.slots:
            slot.transport.pause()

    def resume(self):
        for slot in self.slots:
            slot.transport.resume()

    def stats(self):
        return [slot.stats() for slot in self.slots]

    def close(self):
        # The closed slots stay listed: an in-process caller may read a stopped machine's
        # device metrics (dom.machine after the guest powered off).
        if self._closed:
            return
        self._closed = True
        for slot in self.slots:
            slot.close()

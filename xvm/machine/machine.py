"""One running machine: guest memory, vCPU threads, buses and devices.

A :class:`Machine` is built completely in its constructor (VM, memory, irqchip,
devices, kernel loaded, vCPUs configured); any failure there releases
everything already made and raises.  ``start()`` starts one thread per vCPU,
each blocked in KVM_RUN with the GIL released and dispatching exits to the
port-I/O or MMIO bus.  When the guest powers off, resets or crashes, or the
machine is stopped, every vCPU thread ends and ``wait()`` returns the reason.
"""
import enum
import os
import threading
from dataclasses import dataclass

from ..devices.legacy.i8042 import DATA_PORT as I8042_BASE
from ..devices.legacy.i8042 import I8042
from ..devices.block import VirtioBlock
from ..devices.legacy.serial import Serial8250
from ..devices.virtio.mmio import VirtioMmioDevice
from ..devices.virtio.pci import VirtioPciDevice
from ..devices.pci import GsiRouter, PciHostBridge
from ..devices.pci import acpi as pci_acpi
from ..errors import BootError, ConfigError
from ..kvm import exits
from ..kvm.memory import GuestMemory
from ..kvm.vcpu import install_kick_handler
from . import cpu, layout
from ..acpi.pm import PM_BASE, PM_SIZE, SCI_IRQ, AcpiPm
from ..acpi import VirtioMmio, build_tables
from .boot.elf import ElfImage, load_pvh
from .boot.linux import KernelFormat, kernel_format, load_bzimage
from .bus import Bus

COM1_BASE = 0x3F8
COM1_IRQ = 4
POST_PORT = 0x80  # POST codes and, on PVM hosts, the "deliver pending interrupts" doorbell


class ExitReason(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off
    RESET = "reset"  # the guest asked for a reset (i8042, triple fault)
    CRASH = "crash"  # the guest did something the VMM cannot carry out
    STOPPED = "stopped"  # the host stopped it (destroy)


@dataclass(frozen=True)
class MachineExit:
    reason: ExitReason
    detail: str = ""


# IOAPIC inputs above the ISA range, so no legacy device shares them; edge-triggered.
VIRTIO_MMIO_GSIS = tuple(range(16, 24))


@dataclass(eq=False)
class VirtioSlot:
    """One virtio-mmio device as the machine wired it."""

    device: object
    transport: object
    base: int
    gsi: int
    irq_fd: int

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


class Machine:
    def __init__(
        self, kvm, *, vcpus, memory_bytes, kernel, initrd=None, cmdline="", console_sink=None,
        disabled_cpu_features=(), disks=(), nics=(),
        virtio_transport="mmio",
    ):
        self.kvm = kvm
        self.vcpu_count = vcpus
        self.memory_bytes = memory_bytes
        self.disabled_cpu_features = tuple(disabled_cpu_features)
        self.pio_bus = Bus("port I/O")
        self.mmio_bus = Bus("MMIO")
        self.vm = None
        self.memory = None
        self._threads = []
        self._state_lock = threading.Condition()
        self._exit = None
        self._pause_requested = False
        self._parked = 0
        self._started = False
        self.virtio = []  # VirtioSlot per virtio-mmio device
        self.virtio_pci = []  # VirtioSlot per virtio-pci function
        if virtio_transport not in ("mmio", "pci"):
            raise ConfigError(f"virtio_transport must be 'mmio' or 'pci', not {virtio_transport!r}")
        self.virtio_transport = virtio_transport
        self.pci = None  # the PCI host bridge (bus 0)
        self.gsi_router = None  # KVM GSI routing: IOAPIC/PIC defaults + MSI vectors
        install_kick_handler()
        try:
            self._build(kernel, initrd, cmdline, console_sink or (lambda data: None), disks, nics)
        except BaseException:
            self.close()
            raise

    # -- construction -----------------------------------------------------
    def _build(self, kernel, initrd, cmdline, console_sink, disks, nics=()):
        kernel_data = _read_boot_file(kernel, "kernel")
        initrd_data = _read_boot_file(initrd, "initrd") if initrd is not None else None
        kind = kernel_format(kernel_data, str(kernel))
        image = ElfImage(kernel_data, str(kernel)) if kind is KernelFormat.ELF else None

        self.vm = self.kvm.create_vm()
        self.vm.set_tss_address()
        self.vm.set_identity_map_address()
        self.vm.create_irqchip()
        self.vm.create_pit2()
        self.memory = GuestMemory.create(layout.ram_ranges(self.memory_bytes))
        self.vm.map_memory(self.memory)

        self.serial = Serial8250(console_sink, lambda level: self.vm.irq_line(COM1_IRQ, int(level)))
        self.i8042 = I8042(lambda: self._guest_exit(ExitReason.RESET, "i8042 reset"))
        self.acpi_pm = AcpiPm(
            sci=lambda level: self.vm.irq_line(SCI_IRQ, int(level)),
            on_poweroff=lambda: self._guest_exit(ExitReason.POWEROFF),
        )
        self.pio_bus.register(COM1_BASE, 8, self.serial)
        self.pio_bus.register(I8042_BASE, 5, self.i8042)
        self.pio_bus.register(PM_BASE, PM_SIZE, self.acpi_pm)
        self.pio_bus.register(POST_PORT, 1, _IgnoredPort())
        self.gsi_router = GsiRouter(self.vm)
        self.pci = PciHostBridge(self.mmio_bus, window=layout.PCI_MMIO_WINDOW,
                                 ecam_base=layout.PCI_ECAM_BASE)
        self.pci.register(self.pio_bus)

        for disk in disks:
            self.add_virtio(VirtioBlock(disk), name=f"virtio-blk:{disk.path}")
        for nic in nics:  # xvm.net.NicPlan: opens a TAP on its bridge
            self.add_virtio(nic.open_device(), name=f"virtio-net:{nic.mac}")
        rsdp = build_tables(
            self.memory, cpus=self.vcpu_count,
            virtio_mmio=[VirtioMmio(slot.base, slot.transport.size, slot.gsi) for slot in self.virtio],
            extra_tables=[pci_acpi.mcfg(layout.PCI_ECAM_BASE)],
            extra_devices=[pci_acpi.pci_root(layout.PCI_MMIO_WINDOW, prt=[
                               (slot.transport.slot, slot.gsi) for slot in self.virtio_pci if slot.gsi >= 0]),
                           pci_acpi.ecam_reservation(layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE)],
        )
        if image is not None:
            plan = load_pvh(
                self.memory, image, cmdline=cmdline.encode(), initrd=initrd_data,
                memory_bytes=self.memory_bytes, rsdp=rsdp,
            )
        else:
            plan = load_bzimage(
                self.memory, kernel_data, cmdline=cmdline.encode(), initrd=initrd_data, rsdp=rsdp,
                e820=layout.e820_map(self.memory_bytes), path=str(kernel),
            )
        supported = self.kvm.supported_cpuid()
        for index in range(self.vcpu_count):
            vcpu = self.vm.create_vcpu(index)
            cpu.configure_cpuid(vcpu, supported, self.vcpu_count, self.disabled_cpu_features)
            cpu.configure_fpu(vcpu)
            cpu.configure_lapic(vcpu)
        cpu.configure_boot_registers(self.vm.vcpus[0], plan)

    def add_virtio_mmio(self, device, name=None):
        """Put ``device`` (a VirtioDevice) behind a virtio-mmio window with its own GSI.

        Queue notifications arrive on KVM ioeventfds and interrupts leave on a
        KVM irqfd, so the data plane never passes through a vCPU thread.
        """
        index = len(self.virtio)
        if index >= len(VIRTIO_MMIO_GSIS):
            device.close()
            raise ConfigError(f"a machine has at most {len(VIRTIO_MMIO_GSIS)} virtio-mmio devices")
        base = layout.VIRTIO_MMIO_BASE + index * layout.VIRTIO_MMIO_SIZE
        gsi = VIRTIO_MMIO_GSIS[index]
        irq_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        slot = VirtioSlot(device, None, base, gsi, irq_fd)
        self.virtio.append(slot)  # from here on close() releases it
        self.vm.irqfd(irq_fd, gsi)
        slot.transport = VirtioMmioDevice(device, self.memory, irq_fd, name=name)
        self.mmio_bus.register(base, slot.transport.size, slot.transport)
        for queue, fd in enumerate(slot.transport.notify_eventfds()):
            self.vm.ioeventfd(fd, base + slot.transport.notify_offset, 4, datamatch=queue)
        return slot

    def add_virtio(self, device, name=None):
        """Add ``device`` behind the machine's virtio transport (``virtio_transport``)."""
        if self.virtio_transport == "pci":
            return self.add_virtio_pci(device, name=name)
        return self.add_virtio_mmio(device, name=name)

    def add_virtio_pci(self, device, name=None):
        """Put ``device`` (a VirtioDevice) on PCI bus 0 as a modern virtio-pci function.

        Notifications arrive on KVM ioeventfds (one address per queue, moved with
        BAR 0); interrupts leave on one irqfd per MSI-X vector, whose GSI is routed
        to the message the guest programs in the vector table.  With MSI-X off, INTA#
        of every function shares one level-triggered GSI (the DSDT's _PRT).
        """
        slot = VirtioSlot(device, None, 0, self._pci_intx_gsi(), -1)
        self.virtio_pci.append(slot)  # from here on close() releases it
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
        for slot in self.virtio_pci:
            if slot.gsi >= 0:
                return slot.gsi
        used = {slot.gsi for slot in self.virtio}
        return next((gsi for gsi in reversed(VIRTIO_MMIO_GSIS) if gsi not in used), -1)

    # -- lifecycle --------------------------------------------------------
    def start(self):
        if self._started:
            raise RuntimeError("machine already started")
        self._started = True
        for vcpu in self.vm.vcpus:
            thread = threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"xvm-vcpu{vcpu.id}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def pause(self):
        """Stop every vCPU outside KVM_RUN, then let the devices finish in-flight I/O."""
        with self._state_lock:
            self._pause_requested = True
        for vcpu in self.vm.vcpus:
            vcpu.kick()
        with self._state_lock:
            self._state_lock.wait_for(lambda: self._parked == self._running_threads() or self._exit)
        for slot in self.virtio + self.virtio_pci:
            slot.transport.pause()

    def resume(self):
        for slot in self.virtio + self.virtio_pci:
            slot.transport.resume()
        with self._state_lock:
            self._pause_requested = False
            self._state_lock.notify_all()

    def stop(self, reason=ExitReason.STOPPED, detail=""):
        """End every vCPU thread; the first recorded exit reason wins."""
        with self._state_lock:
            if self._exit is None:
                self._exit = MachineExit(reason, detail)
            self._state_lock.notify_all()
        for vcpu in self.vm.vcpus if self.vm else ():
            vcpu.kick()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def wait(self, timeout=None):
        """Block until the machine has exited; returns the MachineExit (None on timeout)."""
        with self._state_lock:
            self._state_lock.wait_for(lambda: self._exit is not None, timeout)
        for thread in self._threads:
            thread.join(timeout)
        return self._exit

    @property
    def exit(self):
        return self._exit

    def close(self):
        if self._threads:
            self.stop()
            self._threads.clear()
        for slot in self.virtio + self.virtio_pci:
            slot.close()
        self.virtio.clear()
        self.virtio_pci.clear()
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    # -- vCPU threads -----------------------------------------------------
    def _running_threads(self):
        return sum(1 for t in self._threads if t.is_alive())

    def _guest_exit(self, reason, detail=""):
        with self._state_lock:
            if self._exit is None:
                self._exit = MachineExit(reason, detail)
            self._state_lock.notify_all()
        for vcpu in self.vm.vcpus:
            vcpu.kick()

    def _park(self):
        """Wait here while paused; returns False when the machine is exiting."""
        with self._state_lock:
            if self._exit is not None:
                return False
            if self._pause_requested:
                self._parked += 1
                self._state_lock.notify_all()
                self._state_lock.wait_for(lambda: not self._pause_requested or self._exit is not None)
                self._parked -= 1
            return self._exit is None

    def _vcpu_loop(self, vcpu):
        vcpu.thread_id = threading.get_ident()
        pio, mmio = self.pio_bus, self.mmio_bus
        IoExit, MmioExit, InterruptedExit = exits.IoExit, exits.MmioExit, exits.InterruptedExit
        try:
            while self._exit is None:
                if self._pause_requested and not self._park():
                    break
                exit = vcpu.run()
                kind = type(exit)
                if kind is IoExit:
                    size, data = exit.size, exit.data
                    for i in range(exit.count):
                        pio.handle(exit.port, size, exit.is_write, data[i * size : (i + 1) * size])
                elif kind is MmioExit:
                    mmio.handle(exit.address, exit.size, exit.is_write, exit.data)
                elif kind is InterruptedExit:
                    continue
                elif kind is exits.ShutdownExit:
                    self._guest_exit(ExitReason.RESET, f"triple fault on vCPU {vcpu.id}")
                elif kind is exits.SystemEventExit:
                    self._guest_exit(ExitReason.POWEROFF, f"system event {exit.type}")
                elif kind is exits.InternalErrorExit:
                    self._guest_exit(ExitReason.CRASH, f"vCPU {vcpu.id}: {exit.describe()}")
                elif kind is exits.FailEntryExit:
                    self._guest_exit(
                        ExitReason.CRASH, f"vCPU {vcpu.id}: entry failed, reason {exit.hardware_reason:#x}"
                    )
                else:
                    name = exits.EXIT_NAMES.get(getattr(exit, "code", None), repr(exit))
                    self._guest_exit(ExitReason.CRASH, f"vCPU {vcpu.id}: unhandled exit {name}")
        except Exception as e:  # a VMM bug must stop this machine, not the process
            self._guest_exit(ExitReason.CRASH, f"vCPU {vcpu.id}: VMM error: {e!r}")
        finally:
            vcpu.thread_id = None
            with self._state_lock:
                self._state_lock.notify_all()


def _read_boot_file(path, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    if not data:
        raise BootError(f"{what} {path} is empty")
    return data



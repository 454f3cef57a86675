"""The PCI host bridge: bus 0, configuration access, BAR mapping.

Configuration space is reached two ways (both decode to the same functions):

* configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): the CONFIG_ADDRESS
  dword at port 0xCF8 and the CONFIG_DATA window at 0xCFC-0xCFF;
* ECAM (PCI Express Base §7.2.2): a memory window, 4 KiB per function,
  ``offset = bus << 20 | device << 15 | function << 12 | register``; the
  machine declares it in an ACPI MCFG table.  Bus 0 only: 1 MiB.

Function 00:00.0 is the host bridge itself.  Device functions are function 0
of device 1..31.  Each function's memory BARs are mapped on the machine's MMIO
bus while its command register enables memory decoding and the BAR lies inside
the bridge's memory window without overlapping anything else; otherwise the
BAR decodes nothing (a guest that moves a BAR somewhere unusable loses the
device, never the VMM).
"""
import logging
import threading

from ...errors import ConfigError
from .config import PciFunction

log = logging.getLogger(__name__)

PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PCI_CONFIG_PORTS_SIZE = 8
ECAM_BUS_SIZE = 1 << 20
PCI_MAX_DEVICES = 32

# Red Hat, Inc. "QEMU PCIe Host bridge" (pci.ids 1b36:0008): what Linux guests know.
HOST_BRIDGE_VENDOR_ID = 0x1B36
HOST_BRIDGE_DEVICE_ID = 0x0008
PCI_CLASS_BRIDGE_HOST = 0x060000


class HostBridgeFunction(PciFunction):
    def __init__(self):
        super().__init__(vendor_id=HOST_BRIDGE_VENDOR_ID, device_id=HOST_BRIDGE_DEVICE_ID,
                         class_code=PCI_CLASS_BRIDGE_HOST, name="pci-host-bridge")


class _ConfigPorts:
    """0xCF8-0xCFF on the port-I/O bus."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.address = 0

    def read(self, offset, size):
        if offset < 4:
            # Only a dword access reaches CONFIG_ADDRESS (§3.2.2.3.2).
            return self.address if offset == 0 and size == 4 else (1 << (8 * size)) - 1
        return self.bridge.config_read(*self._target(offset), size)

    def write(self, offset, size, value):
        if offset < 4:
            if offset == 0 and size == 4:
                self.address = value & 0x80FF_FFFC
            return
        self.bridge.config_write(*self._target(offset), size, value)

    def _target(self, offset):
        address = self.address
        if not address & 0x8000_0000:
            return None, 0
        bus, devfn = (address >> 16) & 0xFF, (address >> 8) & 0xFF
        return (bus, devfn), (address & 0xFC) + (offset - 4)


class _Ecam:
    """The ECAM window on the MMIO bus."""

    def __init__(self, bridge):
        self.bridge = bridge

    def read(self, offset, size):
        return self.bridge.config_read((offset >> 20, (offset >> 12) & 0xFF), offset & 0xFFF, size)

    def write(self, offset, size, value):
        self.bridge.config_write((offset >> 20, (offset >> 12) & 0xFF), offset & 0xFFF, size, value)


class PciHostBridge:
    """Bus 0 of one PCI segment.

    ``mmio_bus`` gets the BARs; ``window`` is ``(start, end)`` of the 32-bit
    memory window BARs may decode in (the DSDT's PCI0 _CRS says the same).
    """

    def __init__(self, mmio_bus, *, window, ecam_base):
        self.mmio_bus = mmio_bus
        self.window = window
        self.ecam_base = ecam_base
        self.functions = {}  # devfn -> PciFunction
        self.mapped = {}  # (function, bar) -> address
        self.config_ports = _ConfigPorts(self)
        self.ecam = _Ecam(self)
        self._next_bar = window[0]
        self._lock = threading.RLock()
        self.add(HostBridgeFunction(), device=0)

    # -- VMM side -------------------------------------------------------------

    def register(self, pio_bus):
        """Put the configuration ports and the ECAM window on the buses."""
        pio_bus.register(PCI_CONFIG_ADDRESS, PCI_CONFIG_PORTS_SIZE, self.config_ports)
        self.mmio_bus.register(self.ecam_base, ECAM_BUS_SIZE, self.ecam)

    def unregister(self, pio_bus):
        pio_bus.unregister(self.config_ports)
        self.mmio_bus.unregister(self.ecam)
        with self._lock:
            for function in self.functions.values():
                for index in range(len(function.bar_regions)):
                    self._unmap(function, index)

    def add(self, function, device=None):
        """Plug ``function`` in as function 0 of ``device`` (the next free slot by
        default), preassign its BARs and return the device number."""
        with self._lock:
            if device is None:
                device = next((d for d in range(1, PCI_MAX_DEVICES) if d << 3 not in self.functions), None)
                if device is None:
                    raise ConfigError("PCI bus 0 is full (31 devices)")
            if device << 3 in self.functions:
                raise ConfigError(f"PCI slot {device} is taken")
            for index, size in enumerate(function.bar_sizes):
                if size:
                    address = (self._next_bar + size - 1) & ~(size - 1)
                    if address + size > self.window[1]:
                        raise ConfigError("the PCI memory window is full")
                    function.set_bar_address(index, address)
                    self._next_bar = address + size
            function.on_mapping_change = self.update_mappings
            function.slot = device
            self.functions[device << 3] = function
            return device

    # -- state -------------------------------------------------------------------

    def save(self):
        """A :class:`~.persist.PciHostState` (device functions save with their devices)."""
        from .persist import PciHostState
        with self._lock:
            return PciHostState(self.config_ports.address, bytes(self.functions[0].config))

    def restore(self, state):
        bridge = self.functions[0]
        if len(state.bridge_config) != len(bridge.config):
            raise ValueError("PCI host bridge state has a configuration space of another size")
        with self._lock:
            self.config_ports.address = state.config_address
            bridge.config[:] = state.bridge_config

    # -- configuration access ---------------------------------------------------

    def function_at(self, target):
        if target is None:
            return None
        bus, devfn = target
        return self.functions.get(devfn) if bus == 0 else None

    def config_read(self, target, register, size):
        function = self.function_at(target)
        if function is None:
            return (1 << (8 * size)) - 1  # no function: master abort, all-ones
        return function.config_read(register, size)

    def config_write(self, target, register, size, value):
        function = self.function_at(target)
        if function is not None:
            function.config_write(register, size, value)

    # -- BAR mapping ---------------------------------------------------------------

    def update_mappings(self, function):
        """Make the MMIO bus agree with ``function``'s command register and BARs."""
        with self._lock:
            for index, region in enumerate(function.bar_regions):
                if region is None:
                    continue
                want = function.bar_mapping(index)
                have = self.mapped.get((function, index))
                if want == have:
                    continue
                self._unmap(function, index)
                if want is not None:
                    self._map(function, index, want)

    def _map(self, function, index, address):
        size = function.bar_sizes[index]
        if not (self.window[0] <= address and address + size <= self.window[1]):
            log.info("%s: BAR %d at %#x is outside the PCI window; not decoded",
                     function.name, index, address)
            return
        try:
            self.mmio_bus.register(address, size, function.bar_regions[index])
        except ConfigError:
            log.info("%s: BAR %d at %#x overlaps another device; not decoded",
                     function.name, index, address)
            return
        self.mapped[(function, index)] = address
        moved = getattr(function, "bar_mapped", None)
        if moved is not None:
            moved(index, address)

    def _unmap(self, function, index):
        address = self.mapped.pop((function, index), None)
        if address is None:
            return
        self.mmio_bus.unregister(function.bar_regions[index])
        unmapped = getattr(function, "bar_unmapped", None)
        if unmapped is not None:
            unmapped(index, address)

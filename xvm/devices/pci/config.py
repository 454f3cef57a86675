"""One PCI function's configuration space (PCI Local Bus 3.0 §6.1, type-0 header).

:class:`PciFunction` keeps the 4 KiB configuration space (256 bytes of PCI plus
PCIe extended space, read as zero) as bytes with a per-byte write mask, so an
access of any width from the guest only changes the bits the spec lets it
change.  Memory BARs implement the sizing protocol (§6.2.5.1): the size bits
are read-only zeros, so writing all-ones reads back the size mask.  Subclasses
add capabilities with :meth:`add_capability` and react to writes in
:meth:`config_written`.

Where a BAR is mapped is the host bridge's business: it reads
:meth:`bar_mapping` after every write to the command register or a BAR
(``on_mapping_change``) and maps :attr:`bar_regions` on the MMIO bus.
"""
import logging
import threading

from ...errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_SPACE_SIZE = 4096  # PCIe; bytes 256+ read as zero here (no extended capabilities)
PCI_CONFIG_SIZE = 256

# §6.1 Configuration Space Organization (names from <linux/pci_regs.h>)
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10

PCI_HEADER_TYPE_NORMAL = 0
PCI_NUM_BARS = 6
PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_32 = 0x0
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_BASE_ADDRESS_MEM_MASK = ~0xF & 0xFFFFFFFF

PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_VNDR = 0x09
CAPABILITIES_START = 0x40  # first byte after the type-0 header

_WRITABLE_COMMAND = (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY
                     | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE)


class PciFunction:
    """A type-0 configuration header, memory BARs and a capability list.

    ``bar_regions[i]`` is the bus device (``read(offset, size)``/``write(...)``)
    behind BAR ``i``, or ``None``.  The VMM preassigns addresses with
    :meth:`set_bar_address`; the guest may move them.
    """

    def __init__(self, *, vendor_id, device_id, class_code, revision=0,
                 subsystem_vendor_id=0, subsystem_id=0, interrupt_pin=0, name="pci"):
        self.name = name
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.write_mask = bytearray(CONFIG_SPACE_SIZE)
        self.bar_sizes = [0] * PCI_NUM_BARS
        self.bar_regions = [None] * PCI_NUM_BARS
        self.on_mapping_change = None  # set by the host bridge
        self.slot = None  # device number on bus 0, set by the host bridge
        self.illegal_access_count = 0
        self.lock = threading.RLock()
        self._cap_tail = None  # offset of the last capability's "next" byte
        self._cap_end = CAPABILITIES_START
        self._put(PCI_VENDOR_ID, 2, vendor_id)
        self._put(PCI_DEVICE_ID, 2, device_id)
        self._put(PCI_REVISION_ID, 1, revision)
        self._put(PCI_CLASS_PROG, 3, class_code)  # prog-if, subclass, base class
        self._put(PCI_HEADER_TYPE, 1, PCI_HEADER_TYPE_NORMAL)
        self._put(PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self._put(PCI_SUBSYSTEM_ID, 2, subsystem_id)
        self._put(PCI_INTERRUPT_PIN, 1, interrupt_pin)
        self._mask(PCI_COMMAND, 2, _WRITABLE_COMMAND)
        self._mask(PCI_CACHE_LINE_SIZE, 1, 0xFF)
        self._mask(PCI_LATENCY_TIMER, 1, 0xFF)
        self._mask(PCI_INTERRUPT_LINE, 1, 0xFF)

    # -- building (VMM side) --------------------------------------------------

    def _put(self, offset, size, value):
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def _get(self, offset, size):
        return int.from_bytes(self.config[offset:offset + size], "little")

    def _mask(self, offset, size, mask):
        self.write_mask[offset:offset + size] = mask.to_bytes(size, "little")

    def add_memory_bar(self, index, size, region, *, prefetchable=False):
        """A 32-bit memory BAR of ``size`` bytes (a power of two, at least 16)."""
        if not 0 <= index < PCI_NUM_BARS or self.bar_sizes[index]:
            raise ConfigError(f"{self.name}: BAR {index} is invalid or already in use")
        if size < 16 or size & (size - 1) or size > 1 << 31:
            raise ConfigError(f"{self.name}: BAR size {size:#x} is not a power of two >= 16")
        flags = PCI_BASE_ADDRESS_MEM_TYPE_32 | (PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0)
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        self.bar_sizes[index] = size
        self.bar_regions[index] = region
        self._put(offset, 4, flags)
        # §6.2.5.1: the low bits of a BAR that encode its size are hardwired to zero.
        self._mask(offset, 4, ~(size - 1) & 0xFFFFFFFF)

    def set_bar_address(self, index, address):
        with self.lock:
            offset = PCI_BASE_ADDRESS_0 + 4 * index
            flags = self._get(offset, 4) & 0xF
            self._put(offset, 4, (address & ~(self.bar_sizes[index] - 1)) | flags)

    def add_capability(self, cap_id, body, *, writable=b""):
        """Append capability ``cap_id`` (its bytes after the ID and next pointer);
        ``writable`` is the write mask of those bytes.  Returns its config offset."""
        length = 2 + len(body)
        offset = (self._cap_end + 3) & ~3
        if offset + length > PCI_CONFIG_SIZE:
            raise ConfigError(f"{self.name}: capabilities do not fit in configuration space")
        self.config[offset] = cap_id
        self.config[offset + 1] = 0
        self.config[offset + 2:offset + length] = body
        self.write_mask[offset + 2:offset + 2 + len(writable)] = writable
        if self._cap_tail is None:
            self._put(PCI_CAPABILITY_LIST, 1, offset)
            self._put(PCI_STATUS, 2, self._get(PCI_STATUS, 2) | PCI_STATUS_CAP_LIST)
        else:
            self.config[self._cap_tail] = offset
        self._cap_tail = offset + 1
        self._cap_end = offset + length
        return offset

    # -- guest side -----------------------------------------------------------

    @property
    def command(self):
        return self._get(PCI_COMMAND, 2)

    def bar_address(self, index):
        return self._get(PCI_BASE_ADDRESS_0 + 4 * index, 4) & PCI_BASE_ADDRESS_MEM_MASK

    def bar_mapping(self, index):
        """Where BAR ``index`` decodes now: its address, or None when memory
        decoding is off (§6.2.2 Command register bit 1) or the BAR is unset."""
        if not self.bar_sizes[index] or not self.command & PCI_COMMAND_MEMORY:
            return None
        address = self.bar_address(index)
        return address or None

    def config_read(self, offset, size):
        if size not in (1, 2, 4) or offset % size or offset + size > CONFIG_SPACE_SIZE:
            self.illegal_access_count += 1
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0
        with self.lock:
            return self.read_config_register(offset, size)

    def read_config_register(self, offset, size):
        """Hook for registers whose value is computed on read."""
        return self._get(offset, size)

    def config_write(self, offset, size, value):
        # §3.2.2.3.2/§6.1: accesses are naturally aligned bytes, words or dwords.
        if size not in (1, 2, 4) or offset % size or offset + size > CONFIG_SPACE_SIZE:
            self.illegal_access_count += 1
            log.info("%s: ignored unaligned config write at %#x size %d", self.name, offset, size)
            return
        with self.lock:
            old = self.config[offset:offset + size]
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            new = bytes((o & ~m) | (d & m) for o, d, m in
                        zip(old, data, self.write_mask[offset:offset + size]))
            self.config[offset:offset + size] = new
            self.config_written(offset, size, bytes(old))
            end = offset + size
            if offset < PCI_COMMAND + 2 and end > PCI_COMMAND or (
                    offset < PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS and end > PCI_BASE_ADDRESS_0):
                if new != old and self.on_mapping_change is not None:
                    self.on_mapping_change(self)

    def config_written(self, offset, size, old):
        """Hook: ``size`` bytes at ``offset`` were written (``old`` = previous bytes)."""


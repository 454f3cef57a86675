"""Guest-physical memory map of an xvm machine (x86-64).

    0x0000_0000  RAM (low): real-mode IVT/BDA, boot structures, kernel at 1 MiB
    0x000E_0000  ACPI RSDP search area (inside low RAM)
    0xC000_0000  32-bit MMIO hole: virtio-mmio window, PCI ECAM and BAR window, IOAPIC,
                 LAPIC, KVM TSS
    0x1_0000_0000  RAM (high): whatever did not fit below the hole
"""
MiB = 1 << 20
GiB = 1 << 30

MMIO_HOLE_START = 0xC000_0000
HIGH_RAM_START = 1 << 32

# Boot structures in low RAM, below the 1 MiB kernel load address.
BOOT_GDT = 0x0500
BOOT_INFO = 0x6000  # PVH hvm_start_info, or Linux boot_params (zero page)
BOOT_MEMMAP = 0x7000  # PVH memory map entries
BOOT_CMDLINE = 0x2_0000
BOOT_CMDLINE_MAX = 4096
BOOT_PAGE_TABLES = 0x9000  # PML4, PDPT, PDs for a 64-bit entry
EBDA_START = 0x9_F000
ACPI_TABLES = 0xE_0000
ACPI_TABLES_END = 0x10_0000
KERNEL_MIN_ADDRESS = 0x10_0000

VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_SIZE = 0x1000
PCI_ECAM_BASE = 0xE000_0000  # ECAM of PCI bus 0, declared by the MCFG table
PCI_ECAM_SIZE = 1 << 20
PCI_MMIO_WINDOW = (0xE100_0000, 0xF000_0000)  # 32-bit BARs: the DSDT PCI0 _CRS window
IOAPIC_ADDRESS = 0xFEC0_0000
LAPIC_ADDRESS = 0xFEE0_0000


def ram_ranges(memory_bytes):
    """``(gpa, size)`` pairs of guest RAM for a machine with ``memory_bytes``."""
    low = min(memory_bytes, MMIO_HOLE_START)
    ranges = [(0, low)]
    if memory_bytes > low:
        ranges.append((HIGH_RAM_START, memory_bytes - low))
    return ranges


def e820_map(memory_bytes):
    """The guest's memory map: ``(address, size, type)`` with E820 type 1 = RAM, 2 = reserved."""
    entries = [(0, EBDA_START, 1), (EBDA_START, KERNEL_MIN_ADDRESS - EBDA_START, 2)]
    for gpa, size in ram_ranges(memory_bytes):
        start = max(gpa, KERNEL_MIN_ADDRESS)
        entries.append((start, gpa + size - start, 1))
    # The ECAM window the MCFG declares, reserved as firmware would (PCI Firmware 3.0 §4.1.2).
    entries.append((PCI_ECAM_BASE, PCI_ECAM_SIZE, 2))
    return sorted(entries)

"""Builders for the ACPI tables of an xvm PC-like machine (ACPI 6.x, chapter 5.2).

Each function returns the table's bytes with its checksum already right.
Addresses of other tables are parameters: :mod:`.build` decides where each
table lives and links them.
"""
import struct

from ..errors import ConfigError
from . import aml

OEM_ID = b"XVM   "  # 6 bytes
OEM_TABLE_ID = b"XVMMACH "  # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"XVM "
CREATOR_REVISION = 1

# 5.2.3.2 Generic Address Structure address space IDs and access sizes
GAS_SYSTEM_MEMORY = 0
GAS_SYSTEM_IO = 1
GAS_ACCESS_UNDEFINED = 0
GAS_ACCESS_BYTE = 1
GAS_ACCESS_WORD = 2
GAS_ACCESS_DWORD = 3

# 5.2.9 FADT: Fixed ACPI Description Table, revision 6 (ACPI 6.0-6.5), 276 bytes
FADT_REVISION = 6
FADT_MINOR_REVISION = 3
FADT_LENGTH = 276
# Table 5.10 Fixed ACPI Description Table Fixed Feature Flags
FADT_F_WBINVD = 1 << 0
FADT_F_PROC_C1 = 1 << 2
FADT_F_PWR_BUTTON = 1 << 4  # set: power button is a control method / absent
FADT_F_SLP_BUTTON = 1 << 5  # set: sleep button is a control method / absent
FADT_F_FIX_RTC = 1 << 6  # set: RTC wake status is not a fixed register
FADT_F_TMR_VAL_EXT = 1 << 8
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
# 5.2.9.3 IA-PC Boot Architecture Flags
IAPC_BOOT_ARCH_LEGACY_DEVICES = 1 << 0
IAPC_BOOT_ARCH_8042 = 1 << 1
IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3
IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5

# 5.2.12 MADT
MADT_REVISION = 5
MADT_PCAT_COMPAT = 1 << 0
MADT_TYPE_LOCAL_APIC = 0
MADT_TYPE_IO_APIC = 1
MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE = 2
MADT_TYPE_LOCAL_APIC_NMI = 4
MADT_LOCAL_APIC_ENABLED = 1 << 0
# 5.2.12.5 MPS INTI flags
MPS_INTI_POLARITY_CONFORMS = 0b00
MPS_INTI_POLARITY_ACTIVE_HIGH = 0b01
MPS_INTI_POLARITY_ACTIVE_LOW = 0b11
MPS_INTI_TRIGGER_CONFORMS = 0b00 << 2
MPS_INTI_TRIGGER_EDGE = 0b01 << 2
MPS_INTI_TRIGGER_LEVEL = 0b11 << 2

_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # 5.2.6 System Description Table Header, 36 bytes
HEADER_SIZE = _HEADER.size
RSDP_SIZE = 36
FACS_SIZE = 64


def checksum(data):
    """The byte that makes ``data`` (with that byte zero) sum to 0 modulo 256."""
    return (-sum(data)) & 0xFF


def sdt(signature, revision, body):
    """A complete table: 5.2.6 header (length, checksum) followed by ``body``."""
    table = bytearray(
        _HEADER.pack(
            signature,
            HEADER_SIZE + len(body),
            revision,
            0,
            OEM_ID,
            OEM_TABLE_ID,
            OEM_REVISION,
            CREATOR_ID,
            CREATOR_REVISION,
        )
        + body
    )
    table[9] = checksum(table)
    return bytes(table)


def rsdp(xsdt_address, rsdt_address=0):
    """5.2.5.3 Root System Description Pointer, revision 2 (36 bytes, both checksums)."""
    data = bytearray(
        struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_address, RSDP_SIZE, xsdt_address, 0)
    )
    data[8] = checksum(data[:20])
    data[32] = checksum(data)
    return bytes(data)


def xsdt(addresses):
    """5.2.8 Extended System Description Table: 64-bit pointers to the other tables."""
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in addresses))


def rsdt(addresses):
    """5.2.7 Root System Description Table: 32-bit pointers (for ``acpi=rsdt`` guests)."""
    if any(a >= 1 << 32 for a in addresses):
        raise ConfigError("RSDT entries must lie below 4 GiB")
    return sdt(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in addresses))


def facs():
    """5.2.10 Firmware ACPI Control Structure (no checksum; must be 64-byte aligned)."""
    # Signature, Length, Hardware Signature, Firmware Waking Vector, Global Lock, Flags,
    # X_Firmware_Waking_Vector, Version (2), OSPM Flags.
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 2, 0)


def gas(space, bit_width, address, *, access_size=GAS_ACCESS_UNDEFINED, bit_offset=0):
    """5.2.3.2 Generic Address Structure (12 bytes)."""
    return struct.pack("<BBBBQ", space, bit_width, bit_offset, access_size, address)


_NO_GAS = bytes(12)


def fadt(
    *,
    dsdt_address,
    facs_address,
    sci_irq,
    pm1a_evt,
    pm1a_cnt,
    pm_tmr=None,
    reset=None,
    i8042=True,
    rtc=False,
    vga=False,
):
    """5.2.9 FADT for a full (not hardware-reduced) ACPI PC without SMM.

    ``pm1a_evt``/``pm1a_cnt``/``pm_tmr`` are I/O port numbers of the PM1a
    event block (4 bytes), PM1a control block (2 bytes) and the 32-bit PM timer
    (4 bytes, optional).  SMI_CMD is 0, so the OS finds the machine already in
    ACPI mode (SCI_EN must read as 1).  ``reset`` is ``(io_port, value)`` of the
    reset register, or ``None``.
    """
    if dsdt_address >= 1 << 32 or facs_address >= 1 << 32:
        raise ConfigError("the DSDT and FACS must lie below 4 GiB")
    flags = FADT_F_WBINVD | FADT_F_PROC_C1 | FADT_F_SLP_BUTTON | FADT_F_FIX_RTC
    if pm_tmr is not None:
        flags |= FADT_F_TMR_VAL_EXT
    if reset is not None:
        flags |= FADT_F_RESET_REG_SUP
    boot_arch = IAPC_BOOT_ARCH_LEGACY_DEVICES
    if i8042:
        boot_arch |= IAPC_BOOT_ARCH_8042
    if not vga:
        boot_arch |= IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    if not rtc:
        boot_arch |= IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT
    reset_port, reset_value = reset if reset is not None else (0, 0)

    body = bytearray()
    # FIRMWARE_CTRL must be zero when X_FIRMWARE_CTRL is set (5.2.9, Table 5.9): Linux
    # would otherwise install the FACS twice.  DSDT and X_DSDT both point at the DSDT.
    body += struct.pack("<II", 0, dsdt_address)  # FIRMWARE_CTRL, DSDT
    body += struct.pack("<BBH", 0, 0, sci_irq)  # reserved, Preferred_PM_Profile (unspecified), SCI_INT
    body += struct.pack("<IBBBB", 0, 0, 0, 0, 0)  # SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    body += struct.pack(
        "<IIIIIIII", pm1a_evt, 0, pm1a_cnt, 0, 0, pm_tmr or 0, 0, 0
    )  # PM1a/b_EVT, PM1a/b_CNT, PM2_CNT, PM_TMR, GPE0, GPE1 blocks
    body += struct.pack(
        "<BBBBBBBB", 4, 2, 0, 4 if pm_tmr is not None else 0, 0, 0, 0, 0
    )  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0/1_BLK_LEN, GPE1_BASE, CST_CNT
    body += struct.pack("<HH", 101, 1001)  # P_LVL2_LAT > 100, P_LVL3_LAT > 1000: no C2/C3
    body += struct.pack("<HHBBBBB", 0, 0, 0, 0, 0, 0, 0)  # FLUSH_*, DUTY_*, DAY/MON_ALRM, CENTURY
    body += struct.pack("<HBI", boot_arch, 0, flags)  # IAPC_BOOT_ARCH, reserved, Flags
    body += gas(GAS_SYSTEM_IO, 8, reset_port, access_size=GAS_ACCESS_BYTE) if reset else _NO_GAS
    body += struct.pack("<BHB", reset_value, 0, FADT_MINOR_REVISION)  # RESET_VALUE, ARM_BOOT_ARCH, minor
    body += struct.pack("<QQ", facs_address, dsdt_address)  # X_FIRMWARE_CTRL, X_DSDT
    body += gas(GAS_SYSTEM_IO, 32, pm1a_evt, access_size=GAS_ACCESS_WORD)  # X_PM1a_EVT_BLK
    body += _NO_GAS  # X_PM1b_EVT_BLK
    body += gas(GAS_SYSTEM_IO, 16, pm1a_cnt, access_size=GAS_ACCESS_WORD)  # X_PM1a_CNT_BLK
    body += _NO_GAS * 2  # X_PM1b_CNT_BLK, X_PM2_CNT_BLK
    if pm_tmr is not None:
        body += gas(GAS_SYSTEM_IO, 32, pm_tmr, access_size=GAS_ACCESS_DWORD)  # X_PM_TMR_BLK
    else:
        body += _NO_GAS
    body += _NO_GAS * 4  # X_GPE0_BLK, X_GPE1_BLK, SLEEP_CONTROL_REG, SLEEP_STATUS_REG
    body += b"XVM\0\0\0\0\0"  # Hypervisor Vendor Identity
    table = sdt(b"FACP", FADT_REVISION, bytes(body))
    assert len(table) == FADT_LENGTH, len(table)
    return table


def madt(
    cpus,
    *,
    lapic_address,
    ioapic_address,
    ioapic_id=0,
    sci_irq=9,
    pcat_compat=True,
):
    """5.2.12 MADT: one enabled Local APIC per vCPU (APIC ID = processor UID = index),
    the IOAPIC at GSI base 0, and the PC's interrupt source overrides (IRQ0 -> GSI2,
    SCI level/active-high), plus LINT1 as NMI on every processor."""
    if not 1 <= cpus <= 255:
        raise ConfigError(f"{cpus} vCPUs: xAPIC MADT entries support 1-255")
    body = bytearray(struct.pack("<II", lapic_address, MADT_PCAT_COMPAT if pcat_compat else 0))
    for cpu in range(cpus):
        body += struct.pack("<BBBBI", MADT_TYPE_LOCAL_APIC, 8, cpu, cpu, MADT_LOCAL_APIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_TYPE_IO_APIC, 12, ioapic_id, 0, ioapic_address, 0)
    body += struct.pack("<BBBBIH", MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0, 2, 0)
    sci_flags = MPS_INTI_POLARITY_ACTIVE_HIGH | MPS_INTI_TRIGGER_LEVEL
    body += struct.pack("<BBBBIH", MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, 0, sci_irq, sci_irq, sci_flags)
    body += struct.pack("<BBBHB", MADT_TYPE_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)
    return sdt(b"APIC", MADT_REVISION, bytes(body))


def dsdt(*, cpus, serial=((0x3F8, 4),), i8042=True, virtio_mmio=(), extra_devices=()):
    """The DSDT: ``\\_S5`` (SLP_TYP 0) and, under ``\\_SB``, the processors, the
    COM ports, the i8042 and every virtio-mmio device (``LNRO0005``, found by
    Linux's virtio_mmio driver through ACPI, no command line needed).

    ``virtio_mmio`` holds :class:`~.build.VirtioMmio` (or ``(base, size, gsi[, level])``);
    ``extra_devices`` are encoded AML terms (e.g. an ``aml.device("PCI0", ...)``) added to ``\\_SB``.
    """
    if len(virtio_mmio) > 256:
        raise ConfigError("at most 256 virtio-mmio devices")
    devices = []
    for cpu in range(cpus):
        devices.append(aml.device(f"C{cpu:03X}", aml.name("_HID", "ACPI0007"), aml.name("_UID", cpu)))
    for index, (port, irq) in enumerate(serial):
        devices.append(
            aml.device(
                f"COM{index + 1}",
                aml.name("_HID", aml.eisa_id("PNP0501")),
                aml.name("_UID", index + 1),
                aml.name("_CRS", aml.resource_template(aml.io(port, 8), aml.irq_no_flags(irq))),
            )
        )
    if i8042:
        devices.append(
            aml.device(
                "PS2K",
                aml.name("_HID", aml.eisa_id("PNP0303")),
                aml.name(
                    "_CRS",
                    aml.resource_template(aml.io(0x60, 1), aml.io(0x64, 1), aml.irq_no_flags(1)),
                ),
            )
        )
    for index, entry in enumerate(virtio_mmio):
        base, size, gsi, *rest = entry
        level = bool(rest[0]) if rest else False
        if base + size > 1 << 32:
            raise ConfigError(f"virtio-mmio device at {base:#x} must lie below 4 GiB")
        devices.append(
            aml.device(
                f"VR{index:02X}",
                aml.name("_HID", "LNRO0005"),
                aml.name("_UID", index),
                aml.name("_CCA", 1),
                aml.name(
                    "_CRS",
                    aml.resource_template(
                        aml.memory32_fixed(base, size),
                        aml.extended_interrupt(gsi, level=level),
                    ),
                ),
            )
        )
    devices.extend(bytes(term) for term in extra_devices)
    body = aml.name("\\_S5", [0, 0, 0, 0]) + aml.scope("\\_SB", *devices)
    return sdt(b"DSDT", 2, body)

"""Lay the ACPI tables out in guest memory and link them.

The RSDP goes at ``rsdp_gpa`` (by default 0xE0000, inside the 0xE0000-0xFFFFF
area an OS scans for it, ACPI 6.x 5.2.5.1); the other tables follow it
(FACS 64-byte aligned, the rest 16-byte aligned).  The whole area must be
marked reserved in the guest's memory map.
"""
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import pm, tables

RSDP_GPA = 0xE_0000  # start of the area an OS scans for the RSDP (layout.ACPI_TABLES of xvm.machine)
TABLES_END = 0x10_0000
LAPIC_ADDRESS = 0xFEE0_0000
IOAPIC_ADDRESS = 0xFEC0_0000


@dataclass(frozen=True)
class VirtioMmio:
    """One virtio-mmio transport as the DSDT describes it."""

    base: int
    size: int
    gsi: int
    level: bool = False

    def __iter__(self):
        return iter((self.base, self.size, self.gsi, self.level))


@dataclass(frozen=True)
class AcpiTables:
    """Where each table was written: ``{signature: (gpa, bytes)}`` plus the RSDP address."""

    rsdp: int
    tables: dict = field(default_factory=dict)

    def end(self):
        return max(gpa + len(data) for gpa, data in self.tables.values())


def _align(value, alignment):
    return (value + alignment - 1) & -alignment


def layout_tables(
    base_gpa=None,
    *,
    cpus,
    virtio_mmio=(),
    rsdp_gpa=RSDP_GPA,
    serial=((0x3F8, 4),),
    i8042=True,
    rtc=False,
    pm_timer=True,
    reset=(0x64, 0xFE),
    extra_tables=(),
    extra_devices=(),
    lapic_address=LAPIC_ADDRESS,
    ioapic_address=IOAPIC_ADDRESS,
):
    """Build and place every table without touching memory; returns :class:`AcpiTables`.

    ``base_gpa`` is where the tables after the RSDP start (default: right after
    it).  ``extra_tables`` are complete tables (e.g. an MCFG) to list in the XSDT;
    ``extra_devices`` encoded AML terms for the DSDT's ``\\_SB`` scope.
    ``reset`` is the FADT reset register ``(io_port, value)``: by default the
    i8042's pulse-reset command, which the machine emulates anyway.
    """
    if rsdp_gpa % 16:
        raise ConfigError(f"RSDP address {rsdp_gpa:#x} is not 16-byte aligned")
    cursor = rsdp_gpa + tables.RSDP_SIZE if base_gpa is None else base_gpa
    placed = {}

    def place(signature, data, alignment=16):
        nonlocal cursor
        cursor = _align(cursor, alignment)
        if cursor < rsdp_gpa + tables.RSDP_SIZE and cursor + len(data) > rsdp_gpa:
            raise ConfigError(f"ACPI table {signature} at {cursor:#x} overlaps the RSDP")
        placed[signature] = (cursor, data)
        cursor += len(data)
        return placed[signature][0]

    facs_gpa = place("FACS", tables.facs(), alignment=64)
    dsdt_gpa = place(
        "DSDT",
        tables.dsdt(cpus=cpus, serial=serial, i8042=i8042, virtio_mmio=virtio_mmio, extra_devices=extra_devices),
    )
    fadt_gpa = place(
        "FACP",
        tables.fadt(
            dsdt_address=dsdt_gpa,
            facs_address=facs_gpa,
            sci_irq=pm.SCI_IRQ,
            pm1a_evt=pm.PM1A_EVT_BLK,
            pm1a_cnt=pm.PM1A_CNT_BLK,
            pm_tmr=pm.PM_TMR_BLK if pm_timer else None,
            reset=reset,
            i8042=i8042,
            rtc=rtc,
        ),
    )
    madt_gpa = place(
        "APIC",
        tables.madt(cpus, lapic_address=lapic_address, ioapic_address=ioapic_address, sci_irq=pm.SCI_IRQ),
    )
    listed = [fadt_gpa, madt_gpa]
    for extra in extra_tables:
        signature = bytes(extra[:4]).decode("ascii", "replace")
        if signature in placed or len(extra) < tables.HEADER_SIZE:
            raise ConfigError(f"extra ACPI table {signature!r} is a duplicate or too short")
        listed.append(place(signature, bytes(extra)))
    xsdt_gpa = place("XSDT", tables.xsdt(listed))
    rsdt_gpa = place("RSDT", tables.rsdt(listed))
    placed["RSDP"] = (rsdp_gpa, tables.rsdp(xsdt_gpa, rsdt_gpa))
    return AcpiTables(rsdp_gpa, placed)


def build_tables(memory, base_gpa=None, *, cpus, virtio_mmio=(), limit=None, **options):
    """Write the ACPI tables into ``memory``; returns the RSDP's guest-physical address.

    ``virtio_mmio`` lists ``(base, size, gsi)`` or ``(base, size, gsi, level)``
    (or :class:`VirtioMmio`); GSIs are IOAPIC inputs, edge-triggered unless
    ``level``.  Tables must end below ``limit`` (default: 1 MiB when they
    start in the BIOS area).  Other keywords go to :func:`layout_tables`.
    """
    acpi = layout_tables(base_gpa, cpus=cpus, virtio_mmio=virtio_mmio, **options)
    if limit is None and acpi.rsdp >= RSDP_GPA and (base_gpa or acpi.rsdp) < TABLES_END:
        limit = TABLES_END
    if limit is not None and acpi.end() > limit:
        raise ConfigError(f"ACPI tables end at {acpi.end():#x}, past {limit:#x}")
    for gpa, data in acpi.tables.values():
        memory.write(gpa, data)
    return acpi.rsdp

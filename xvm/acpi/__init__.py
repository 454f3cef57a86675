"""ACPI tables (RSDP, XSDT/RSDT, FADT, FACS, MADT, DSDT) and the PM registers they promise.

What the tables promise, and so what the machine must emulate:

* PM1a_EVT_BLK at I/O 0x600 (4 bytes), PM1a_CNT_BLK at 0x604 (2 bytes), the 32-bit PM timer at
  0x608 (4 bytes, unless ``pm_timer=False``): :class:`AcpiPm`, registered at ``pm.PM_BASE``
  for ``pm.PM_SIZE`` bytes.  SMI_CMD is 0: the machine is always in ACPI mode.
* The SCI on ISA IRQ 9 = GSI 9, level-triggered, active high (MADT override): ``AcpiPm.sci``.
* ``\\_S5`` is ``Package {0, 0, 0, 0}``: power-off is SLP_TYP 0 | SLP_EN written to 0x604.
* A fixed-feature power button (FADT PWR_BUTTON flag clear): ``AcpiPm.raise_power_button()``.
* The reset register: I/O 0x64, value 0xFE (the i8042's pulse-reset command).
* IAPC_BOOT_ARCH: legacy devices, an 8042 at 0x60/0x64, no VGA, no CMOS RTC (``rtc=True`` to
  announce one).  DSDT devices: COM1 (PNP0501, 0x3F8, IRQ 4), the i8042 (PNP0303, 0x60/0x64,
  IRQ 1), one ACPI0007 processor per vCPU and one LNRO0005 per virtio-mmio transport.
* MADT: LAPIC at 0xFEE00000 (APIC ID = vCPU index), IOAPIC id 0 at 0xFEC00000 with GSI base 0,
  PCAT_COMPAT (8259s present), IRQ0 -> GSI2, LINT1 = NMI.
"""
from .build import RSDP_GPA, AcpiTables, VirtioMmio, build_tables, layout_tables
from .pm import AcpiPm, AcpiPmState

__all__ = ["RSDP_GPA", "AcpiTables", "VirtioMmio", "build_tables", "layout_tables", "AcpiPm", "AcpiPmState"]

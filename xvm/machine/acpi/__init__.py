"""ACPI tables (RSDP, XSDT/RSDT, FADT, FACS, MADT, DSDT) and the PM registers they promise."""
from .build import RSDP_GPA, AcpiTables, VirtioMmio, build_tables, layout_tables
from .pm import AcpiPm, AcpiPmState

__all__ = ["RSDP_GPA", "AcpiTables", "VirtioMmio", "build_tables", "layout_tables", "AcpiPm", "AcpiPmState"]

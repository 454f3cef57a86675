"""What the ACPI tables say about the PCI host bridge.

* MCFG (PCI Firmware 3.0 §4.1.2): the ECAM window of segment 0, bus 0.
* ``\\_SB.PCI0`` (ACPI 6.x §6.1.5, §6.2.2): a PCI Express root bridge
  (``_HID`` PNP0A08, ``_CID`` PNP0A03), segment 0, bus 0, whose ``_CRS``
  produces bus 0, the I/O ports except 0xCF8-0xCFF (consumed) and the 32-bit
  memory window the BARs live in.  ``_OSC`` grants the OS every control it
  asks for (there is no firmware to keep any).  ``_PRT`` (§6.2.13) routes
  INTA#-INTD# of each listed slot straight to a GSI (no link devices):
  level-triggered, active low, shareable.
* ``\\_SB.MRES`` (PNP0C02): reserves the ECAM window as a motherboard
  resource, which is what Linux checks before it trusts the MCFG.
"""
import struct

from ...acpi import aml
from ...acpi.tables import sdt

MCFG_REVISION = 1

# 6.4.3.5 Address Space Resource Descriptors (large items)
_LARGE_DWORD_ADDRESS = 0x87
_LARGE_WORD_ADDRESS = 0x88
_RESOURCE_MEMORY = 0
_RESOURCE_IO = 1
_RESOURCE_BUS = 2
_MIN_FIXED = 1 << 2
_MAX_FIXED = 1 << 3
_MEM_READ_WRITE = 1
_IO_ENTIRE_RANGE = 3

# 20.2.5.2 / 20.2.6.2 / 20.2.5.4
_METHOD_OP = 0x14
_RETURN_OP = 0xA4
_ARG3_OP = 0x6B


def mcfg(ecam_base, *, segment=0, start_bus=0, end_bus=0):
    """The MCFG table: 8 reserved bytes, then one allocation per segment/bus range."""
    body = bytes(8) + struct.pack("<QHBBI", ecam_base, segment, start_bus, end_bus, 0)
    return sdt(b"MCFG", MCFG_REVISION, body)


def word_address(kind, minimum, maximum, *, type_flags):
    """6.4.3.5.3 Word Address Space Descriptor, producer, fixed range."""
    body = struct.pack("<BBBHHHHH", kind, _MIN_FIXED | _MAX_FIXED, type_flags, 0,
                       minimum, maximum, 0, maximum - minimum + 1)
    return bytes([_LARGE_WORD_ADDRESS]) + struct.pack("<H", len(body)) + body


def dword_memory(minimum, maximum):
    """6.4.3.5.2 DWord Address Space Descriptor for a read-write memory window."""
    body = struct.pack("<BBBIIIII", _RESOURCE_MEMORY, _MIN_FIXED | _MAX_FIXED, _MEM_READ_WRITE,
                       0, minimum, maximum, 0, maximum - minimum + 1)
    return bytes([_LARGE_DWORD_ADDRESS]) + struct.pack("<H", len(body)) + body


def method_return_arg3(path):
    """``Method(path, 4, NotSerialized) { Return (Arg3) }``."""
    body = aml.name_string(path) + bytes([4, _RETURN_OP, _ARG3_OP])
    return bytes([_METHOD_OP]) + aml.pkg_length(len(body)) + body


def routing_table(prt):
    """``_PRT`` entries for ``prt`` = ``[(slot, gsi)]``: every pin of the slot to ``gsi``.
    Each entry is ``Package {Address (slot << 16 | 0xFFFF), Pin, Source 0, GSI}``."""
    return [[slot << 16 | 0xFFFF, pin, 0, gsi] for slot, gsi in prt for pin in range(4)]


def pci_root(window, *, config_port=0xCF8, prt=()):
    """``Device(PCI0)`` for bus 0 with the memory ``window`` ``(start, end)`` and
    INTx routing ``prt`` (``[(slot, gsi)]``)."""
    start, end = window
    resources = aml.resource_template(
        word_address(_RESOURCE_BUS, 0, 0, type_flags=0),
        aml.io(config_port, 8),
        word_address(_RESOURCE_IO, 0, config_port - 1, type_flags=_IO_ENTIRE_RANGE),
        word_address(_RESOURCE_IO, config_port + 8, 0xFFFF, type_flags=_IO_ENTIRE_RANGE),
        dword_memory(start, end - 1),
    )
    return aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A08")),
        aml.name("_CID", aml.eisa_id("PNP0A03")),
        aml.name("_SEG", 0),
        aml.name("_BBN", 0),
        aml.name("_UID", 0),
        aml.name("_CRS", resources),
        *([aml.name("_PRT", routing_table(prt))] if prt else []),
        method_return_arg3("_OSC"),
    )


def ecam_reservation(ecam_base, size):
    """``Device(MRES)``: the ECAM window as a motherboard resource."""
    return aml.device(
        "MRES",
        aml.name("_HID", aml.eisa_id("PNP0C02")),
        aml.name("_UID", 1),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(ecam_base, size))),
    )

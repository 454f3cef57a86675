"""The PCI host bridge, configuration space, BAR sizing, ACPI description and GSI routing."""
import struct

import pytest

from xvm.devices.pci import GsiRouter, PciFunction, PciHostBridge
from xvm.devices.pci import acpi as pci_acpi
from xvm.devices.pci.irq import FIRST_MSI_GSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE
from xvm.errors import ConfigError
from xvm.kvm.vm import IrqchipRoute, MsiRoute
from xvm.machine import layout
from xvm.acpi import layout_tables
from xvm.machine.bus import Bus

WINDOW = layout.PCI_MMIO_WINDOW
ECAM = layout.PCI_ECAM_BASE


class Region:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return 0x5A

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def make_function(bars=((0, 0x4000),)):
    f = PciFunction(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000, revision=2,
                    subsystem_vendor_id=0x1234, subsystem_id=0x99, name="test")
    for index, size in bars:
        f.add_memory_bar(index, size, Region())
    return f


@pytest.fixture
def bus():
    mmio, pio = Bus("MMIO"), Bus("PIO")
    bridge = PciHostBridge(mmio, window=WINDOW, ecam_base=ECAM)
    bridge.register(pio)
    return mmio, pio, bridge


def conf1(pio, devfn, reg, size=4, value=None):
    pio.write(0xCF8, 4, 0x8000_0000 | devfn << 8 | (reg & 0xFC))
    if value is None:
        return pio.read(0xCFC + (reg & 3), size)
    pio.write(0xCFC + (reg & 3), size, value)


def ecam(mmio, devfn, reg, size=4, value=None):
    address = ECAM + (devfn << 12) + reg
    if value is None:
        return mmio.read(address, size)
    mmio.write(address, size, value)


def test_host_bridge_at_00_0(bus):
    mmio, pio, bridge = bus
    assert conf1(pio, 0, 0) == 0x0008_1B36
    assert conf1(pio, 0, 0x08) >> 8 == 0x060000  # host bridge class
    assert conf1(pio, 0, 0x0E, 1) == 0  # type-0 header, single function
    assert ecam(mmio, 0, 0) == 0x0008_1B36


def test_empty_slots_and_functions_read_all_ones(bus):
    mmio, pio, bridge = bus
    assert conf1(pio, 1 << 3, 0) == 0xFFFF_FFFF
    assert conf1(pio, 1, 0, 2) == 0xFFFF  # function 1 of the host bridge
    assert ecam(mmio, 31 << 3, 0, 2) == 0xFFFF
    conf1(pio, 5 << 3, 0x04, 2, 0xFFFF)  # writes to nothing are dropped


def test_type1_detection_as_linux_probes_it(bus):
    mmio, pio, bridge = bus
    pio.write(0xCFB, 1, 0x01)  # pci_check_type1: a byte write does not reach CONFIG_ADDRESS
    assert pio.read(0xCF8, 4) == 0
    pio.write(0xCF8, 4, 0x8000_0000)
    assert pio.read(0xCF8, 4) == 0x8000_0000
    pio.write(0xCF8, 4, 0x0000_0000)  # enable bit clear: data port reads all-ones
    assert pio.read(0xCFC, 4) == 0xFFFF_FFFF


def test_type1_sub_dword_accesses(bus):
    mmio, pio, bridge = bus
    assert conf1(pio, 0, 0x02, 2) == 0x0008
    assert conf1(pio, 0, 0x01, 1) == 0x1B
    assert conf1(pio, 0, 0x0B, 1) == 0x06


def test_device_header_and_bar_sizing(bus):
    mmio, pio, bridge = bus
    f = make_function(bars=((0, 0x4000), (2, 0x1000)))
    slot = bridge.add(f)
    devfn = slot << 3
    assert slot == 1
    assert conf1(pio, devfn, 0) == 0x5678_1234
    assert conf1(pio, devfn, 0x08) == 0xFF00_0002
    assert conf1(pio, devfn, 0x2C) == 0x0099_1234
    bar0 = conf1(pio, devfn, 0x10)
    assert WINDOW[0] <= bar0 < WINDOW[1] and bar0 % 0x4000 == 0 and bar0 & 0xF == 0
    # Sizing: all-ones reads back the size mask; flag bits stay.
    conf1(pio, devfn, 0x10, 4, 0xFFFF_FFFF)
    assert conf1(pio, devfn, 0x10) == 0xFFFF_C000
    conf1(pio, devfn, 0x10, 4, bar0)
    assert conf1(pio, devfn, 0x10) == bar0
    # Unimplemented BARs are hardwired to zero.
    for reg in (0x14, 0x1C, 0x20, 0x24):
        conf1(pio, devfn, reg, 4, 0xFFFF_FFFF)
        assert conf1(pio, devfn, reg) == 0
    conf1(pio, devfn, 0x18, 4, 0xFFFF_FFFF)
    assert conf1(pio, devfn, 0x18) == 0xFFFF_F000
    # The expansion ROM BAR is not implemented.
    conf1(pio, devfn, 0x30, 4, 0xFFFF_FFFF)
    assert conf1(pio, devfn, 0x30) == 0


def test_read_only_header_fields_ignore_writes(bus):
    mmio, pio, bridge = bus
    devfn = bridge.add(make_function()) << 3
    before = [conf1(pio, devfn, reg) for reg in range(0, 0x40, 4)]
    for reg in (0x00, 0x08, 0x2C, 0x34):
        conf1(pio, devfn, reg, 4, 0xFFFF_FFFF)
    conf1(pio, devfn, 0x06, 2, 0xFFFF)  # status: no error bits to clear
    after = [conf1(pio, devfn, reg) for reg in range(0, 0x40, 4)]
    assert after[0] == before[0] and after[2] == before[2] and after[11] == before[11]
    assert after[1] >> 16 == before[1] >> 16
    # Interrupt line, cache line size and latency timer are scratch registers.
    conf1(pio, devfn, 0x3C, 1, 0x0B)
    assert conf1(pio, devfn, 0x3C, 1) == 0x0B
    assert conf1(pio, devfn, 0x3D, 1) == 0  # no INTx pin


def test_command_memory_enable_maps_bars(bus):
    mmio, pio, bridge = bus
    f = make_function()
    devfn = bridge.add(f) << 3
    bar0 = conf1(pio, devfn, 0x10)
    assert mmio.read(bar0, 4) == 0xFFFF_FFFF  # not decoded while memory space is off
    conf1(pio, devfn, 0x04, 2, 0x0002)
    assert mmio.read(bar0, 4) == 0x5A
    mmio.write(bar0 + 8, 4, 7)
    assert f.bar_regions[0].writes == [(8, 4, 7)]
    conf1(pio, devfn, 0x04, 2, 0x0000)
    assert mmio.read(bar0, 4) == 0xFFFF_FFFF
    # Only defined command bits stick.
    conf1(pio, devfn, 0x04, 2, 0xFFFF)
    assert conf1(pio, devfn, 0x04, 2) & ~0x0547 == 0


def test_bar_moves_and_unusable_addresses(bus):
    mmio, pio, bridge = bus
    f1, f2 = make_function(), make_function()
    d1, d2 = bridge.add(f1) << 3, bridge.add(f2) << 3
    conf1(pio, d1, 0x04, 2, 2)
    conf1(pio, d2, 0x04, 2, 2)
    a1, a2 = conf1(pio, d1, 0x10), conf1(pio, d2, 0x10)
    assert a1 != a2
    conf1(pio, d1, 0x10, 4, 0xE900_0000)
    assert mmio.find(0xE900_0000)[0] is f1.bar_regions[0] and mmio.find(a1)[0] is None
    conf1(pio, d1, 0x10, 4, a2)  # onto the other function's BAR: refused, nothing decoded
    assert mmio.find(a2)[0] is f2.bar_regions[0]
    assert bridge.mapped.get((f1, 0)) is None
    conf1(pio, d1, 0x10, 4, 0xFEC0_0000)  # outside the window (IOAPIC)
    assert mmio.find(0xFEC0_0000)[0] is None
    conf1(pio, d1, 0x10, 4, 0xE900_0000)
    assert mmio.find(0xE900_0000)[0] is f1.bar_regions[0]


def test_unaligned_and_odd_config_accesses_are_ignored(bus):
    mmio, pio, bridge = bus
    f = make_function()
    devfn = bridge.add(f) << 3
    assert ecam(mmio, devfn, 0x01, 2) == 0xFFFF  # misaligned word
    ecam(mmio, devfn, 0x03, 2, 0)
    assert ecam(mmio, devfn, 0x10, 8) == 0  # not a config access width
    assert f.illegal_access_count == 3
    assert ecam(mmio, devfn, 0x100) == 0  # extended space exists, reads zero
    ecam(mmio, devfn, 0xFFC, 4, 0xFFFF_FFFF)
    assert ecam(mmio, devfn, 0xFFC) == 0


def test_capability_chain():
    f = make_function()
    first = f.add_capability(0x09, b"\x08\x01\x00\x00\x00\x00")
    second = f.add_capability(0x11, struct.pack("<HII", 0, 0, 0))
    assert f.config_read(0x06, 2) & 0x10
    assert f.config_read(0x34, 1) == first == 0x40
    assert f.config_read(first + 1, 1) == second and second % 4 == 0
    assert f.config_read(second, 1) == 0x11 and f.config_read(second + 1, 1) == 0
    with pytest.raises(ConfigError):
        f.add_capability(0x09, bytes(300))


def test_bar_validation():
    f = make_function(bars=())
    with pytest.raises(ConfigError):
        f.add_memory_bar(0, 0x1800, Region())
    with pytest.raises(ConfigError):
        f.add_memory_bar(6, 0x1000, Region())
    f.add_memory_bar(0, 0x1000, Region())
    with pytest.raises(ConfigError):
        f.add_memory_bar(0, 0x1000, Region())


def test_bus_full():
    bridge = PciHostBridge(Bus("MMIO"), window=WINDOW, ecam_base=ECAM)
    for _ in range(31):
        bridge.add(make_function(bars=()))
    with pytest.raises(ConfigError):
        bridge.add(make_function(bars=()))


def test_gsi_router_keeps_irqchip_routes():
    tables = []

    class Vm:
        def set_gsi_routing(self, routes):
            tables.append(list(routes))

    router = GsiRouter(Vm())
    a, b = router.allocate(), router.allocate()
    assert (a, b) == (FIRST_MSI_GSI, FIRST_MSI_GSI + 1)
    router.set_msi(a, 0xFEE0_0000, 0x31)
    router.set_msi(a, 0xFEE0_0000, 0x31)  # unchanged: no ioctl
    assert len(tables) == 1
    table = tables[-1]
    chips = {(r.gsi, r.irqchip, r.pin) for r in table if isinstance(r, IrqchipRoute)}
    assert (0, KVM_IRQCHIP_PIC_MASTER, 0) in chips and (9, KVM_IRQCHIP_PIC_SLAVE, 1) in chips
    assert {(g, KVM_IRQCHIP_IOAPIC, g) for g in range(24)} <= chips
    assert len(chips) == 16 + 24
    assert [(r.gsi, r.address, r.data) for r in table if isinstance(r, MsiRoute)] == [(a, 0xFEE0_0000, 0x31)]
    router.set_msi(b, 0xFEE0_1000, 0x32)
    router.clear(a)
    assert [r.gsi for r in tables[-1] if isinstance(r, MsiRoute)] == [b]
    router.release(b)
    assert not [r for r in tables[-1] if isinstance(r, MsiRoute)]
    assert router.allocate() == FIRST_MSI_GSI + 1  # b is free again; a is still allocated
    router.release(a)
    assert router.allocate() == FIRST_MSI_GSI


def test_mcfg_table():
    table = pci_acpi.mcfg(ECAM)
    assert table[:4] == b"MCFG" and len(table) == 60
    assert struct.unpack_from("<I", table, 4)[0] == 60
    assert sum(table) % 256 == 0
    assert struct.unpack_from("<QHBB", table, 44) == (ECAM, 0, 0, 0)


def test_dsdt_describes_pci0_and_reserves_ecam():
    tables = layout_tables(cpus=1, extra_tables=[pci_acpi.mcfg(ECAM)],
                           extra_devices=[pci_acpi.pci_root(WINDOW),
                                          pci_acpi.ecam_reservation(ECAM, layout.PCI_ECAM_SIZE)])
    dsdt = tables.tables["DSDT"][1]
    assert b"PCI0" in dsdt and b"MRES" in dsdt and b"_OSC" in dsdt and b"_SEG" in dsdt
    assert "MCFG" in tables.tables
    # The memory window: a DWord address space descriptor producing [start, end).
    start, end = WINDOW
    assert struct.pack("<IIII", start, end - 1, 0, end - start) in dsdt
    # Bus 0..0 and the ECAM fixed range.
    assert bytes([0x88, 0x0D, 0x00, 0x02]) in dsdt
    assert struct.pack("<BII", 1, ECAM, layout.PCI_ECAM_SIZE) in dsdt
    assert sum(dsdt) % 256 == 0


def test_dsdt_compiles_with_iasl(tmp_path):
    import shutil
    import subprocess

    if shutil.which("iasl") is None:
        pytest.skip("iasl (acpica-tools) is not installed")
    tables = layout_tables(cpus=1, extra_devices=[pci_acpi.pci_root(WINDOW),
                                                  pci_acpi.ecam_reservation(ECAM, layout.PCI_ECAM_SIZE)])
    (tmp_path / "dsdt.dat").write_bytes(tables.tables["DSDT"][1])
    out = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (tmp_path / "dsdt.dsl").read_text()
    assert 'EisaId ("PNP0A08")' in text and "WordBusNumber" in text and "DWordMemory" in text
    assert "Return (Arg3)" in text


def test_prt_routes_every_pin_of_each_slot_to_its_gsi():
    assert pci_acpi.routing_table([(1, 23), (3, 23)]) == [
        [0x1FFFF, 0, 0, 23], [0x1FFFF, 1, 0, 23], [0x1FFFF, 2, 0, 23], [0x1FFFF, 3, 0, 23],
        [0x3FFFF, 0, 0, 23], [0x3FFFF, 1, 0, 23], [0x3FFFF, 2, 0, 23], [0x3FFFF, 3, 0, 23]]
    assert b"_PRT" in pci_acpi.pci_root(WINDOW, prt=[(1, 23)])
    assert b"_PRT" not in pci_acpi.pci_root(WINDOW)

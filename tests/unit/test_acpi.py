"""ACPI tables: AML encoding, table fields, checksums, and a clean `iasl -d` of every table."""
import shutil
import struct
import subprocess

import pytest

from xvm.errors import ConfigError
from xvm.kvm.memory import GuestMemory
from xvm.acpi import RSDP_GPA, build_tables, layout_tables
from xvm.acpi import aml, tables

VIRTIO = [(0xD000_0000, 0x1000, 5), (0xD000_1000, 0x1000, 6), (0xD000_2000, 0x1000, 7, True)]


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 2 << 20)]) as mem:
        yield mem


def sdt_tables(acpi):
    return {sig: data for sig, (_gpa, data) in acpi.tables.items() if sig not in ("RSDP", "FACS")}


# --- AML encoder -------------------------------------------------------------------------


def test_pkg_length_encodings():
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(0x3E) == b"\x3f"
    # 0x3F + 2 = 0x41: two bytes, low nibble in the lead byte
    assert aml.pkg_length(0x3F) == bytes([0x40 | 0x1, 0x04])
    assert aml.pkg_length(4093) == bytes([0x40 | 0xF, 0xFF])
    assert aml.pkg_length(4094) == bytes([0x80 | 0x1, 0x00, 0x01])


def test_integers_use_shortest_encoding():
    assert aml.integer(0) == b"\x00"
    assert aml.integer(1) == b"\x01"
    assert aml.integer(0x3F8) == b"\x0b\xf8\x03"
    assert aml.integer(0xD000_0000) == b"\x0c\x00\x00\x00\xd0"
    assert aml.integer(1 << 40) == b"\x0e" + struct.pack("<Q", 1 << 40)
    with pytest.raises(ConfigError):
        aml.integer(-1)


def test_names():
    assert aml.name_string("_SB") == b"_SB_"
    assert aml.name_string("\\_SB.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("\\A.B.C") == b"\\\x2f\x03A___B___C___"
    assert aml.name_string("\\") == b"\\\x00"
    with pytest.raises(ConfigError):
        aml.name_seg("1ABC")
    with pytest.raises(ConfigError):
        aml.name_seg("ABCDE")


def test_eisa_id_matches_asl():
    # ASL EISAID("PNP0501") == 0x0105D041; EISAID("PNP0303") == 0x0303D041
    assert aml.eisa_id("PNP0501") == b"\x0c" + struct.pack("<I", 0x0105D041)
    assert aml.eisa_id("PNP0303") == b"\x0c" + struct.pack("<I", 0x0303D041)
    with pytest.raises(ConfigError):
        aml.eisa_id("pnp0501")


def test_resource_descriptors():
    assert aml.io(0x3F8, 8) == bytes([0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8])
    assert aml.irq_no_flags(4) == bytes([0x22, 0x10, 0x00])
    assert aml.memory32_fixed(0xD000_0000, 0x1000) == bytes([0x86, 9, 0, 1]) + struct.pack("<II", 0xD000_0000, 0x1000)
    # consumer | edge = 0x03; level = 0x01
    assert aml.extended_interrupt(5) == bytes([0x89, 6, 0, 0x03, 1, 5, 0, 0, 0])
    assert aml.extended_interrupt(5, level=True)[3] == 0x01
    template = aml.resource_template(aml.irq_no_flags(4))
    assert template.endswith(bytes([0x79, 0]))


# --- tables -------------------------------------------------------------------------------


def test_every_checksum_is_right(memory):
    rsdp_gpa = build_tables(memory, cpus=4, virtio_mmio=VIRTIO)
    assert rsdp_gpa == RSDP_GPA == 0xE0000
    rsdp = memory.read(rsdp_gpa, 36)
    assert rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    revision, rsdt_addr, length, xsdt_addr = struct.unpack_from("<BIIQ", rsdp, 15)
    assert (revision, length) == (2, 36)
    seen = {}
    for addr in [xsdt_addr, rsdt_addr]:
        sig, length = struct.unpack_from("<4sI", memory.read(addr, 8))
        table = memory.read(addr, length)
        assert sum(table) % 256 == 0, sig
        seen[sig] = table
    xsdt = seen[b"XSDT"]
    pointers = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert struct.unpack_from(f"<{len(pointers)}I", seen[b"RSDT"], 36) == pointers
    found = {}
    for addr in pointers:
        sig, length = struct.unpack_from("<4sI", memory.read(addr, 8))
        table = memory.read(addr, length)
        assert sum(table) % 256 == 0, sig
        found[sig] = (addr, table)
    assert set(found) == {b"FACP", b"APIC"}
    fadt = found[b"FACP"][1]
    firmware_ctrl, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    facs_addr, x_dsdt = struct.unpack_from("<QQ", fadt, 132)
    assert firmware_ctrl == 0 and x_dsdt == dsdt_addr  # X_FIRMWARE_CTRL only: one FACS
    dsdt_len = struct.unpack_from("<I", memory.read(dsdt_addr + 4, 4))[0]
    assert sum(memory.read(dsdt_addr, dsdt_len)) % 256 == 0
    assert memory.read(facs_addr, 4) == b"FACS"
    assert facs_addr % 64 == 0
    # everything inside the BIOS area the OS scans / the e820 reserves
    acpi = layout_tables(cpus=4, virtio_mmio=VIRTIO)
    assert acpi.end() <= 0x10_0000


def test_fadt_fields():
    fadt = layout_tables(cpus=1).tables["FACP"][1]
    assert len(fadt) == 276 and fadt[8] == 6  # length, revision 6 (ACPI 6.x)
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # SMI_CMD: already in ACPI mode
    pm1a_evt, _, pm1a_cnt, _, _, pm_tmr = struct.unpack_from("<6I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (0x600, 0x604, 0x608)
    assert tuple(fadt[88:92]) == (4, 2, 0, 4)
    boot_arch, _, flags = struct.unpack_from("<HBI", fadt, 109)
    assert boot_arch & tables.IAPC_BOOT_ARCH_8042
    assert boot_arch & tables.IAPC_BOOT_ARCH_LEGACY_DEVICES
    assert not flags & tables.FADT_F_HW_REDUCED_ACPI
    assert not flags & tables.FADT_F_PWR_BUTTON  # fixed-feature power button
    assert flags & tables.FADT_F_RESET_REG_SUP
    space, width, _, _, address = struct.unpack_from("<BBBBQ", fadt, 116)
    assert (space, width, address, fadt[128]) == (1, 8, 0x64, 0xFE)
    # X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: System I/O
    assert struct.unpack_from("<BBBBQ", fadt, 148) == (1, 32, 0, 2, 0x600)
    assert struct.unpack_from("<BBBBQ", fadt, 172) == (1, 16, 0, 2, 0x604)
    assert struct.unpack_from("<BBBBQ", fadt, 208) == (1, 32, 0, 3, 0x608)


def test_fadt_without_timer_or_8042():
    fadt = layout_tables(cpus=1, pm_timer=False, i8042=False, reset=None).tables["FACP"][1]
    assert struct.unpack_from("<I", fadt, 76)[0] == 0 and fadt[91] == 0
    boot_arch, _, flags = struct.unpack_from("<HBI", fadt, 109)
    assert not boot_arch & tables.IAPC_BOOT_ARCH_8042
    assert not flags & (tables.FADT_F_TMR_VAL_EXT | tables.FADT_F_RESET_REG_SUP)


def parse_madt(madt):
    entries = []
    offset = 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2
        entries.append((kind, bytes(madt[offset : offset + length])))
        offset += length
    assert offset == len(madt)
    return entries


def test_madt_entries():
    madt = layout_tables(cpus=3).tables["APIC"][1]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE0_0000, 1)
    entries = parse_madt(madt)
    lapics = [struct.unpack("<BBBBI", e) for k, e in entries if k == 0]
    assert [(uid, apic, flags) for _, _, uid, apic, flags in lapics] == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]
    (ioapic,) = [struct.unpack("<BBBBII", e) for k, e in entries if k == 1]
    assert ioapic[2:] == (0, 0, 0xFEC0_0000, 0)
    overrides = [struct.unpack("<BBBBIH", e)[2:] for k, e in entries if k == 2]
    assert (0, 0, 2, 0) in overrides  # IRQ0 -> GSI2
    assert (0, 9, 9, 0x0D) in overrides  # SCI: level, active high
    nmis = [struct.unpack("<BBBHB", e) for k, e in entries if k == 4]
    assert nmis == [(4, 6, 0xFF, 0, 1)]


def test_madt_rejects_too_many_cpus():
    with pytest.raises(ConfigError):
        layout_tables(cpus=256)
    with pytest.raises(ConfigError):
        layout_tables(cpus=0)


def test_dsdt_contains_devices():
    dsdt = layout_tables(cpus=2, virtio_mmio=VIRTIO).tables["DSDT"][1]
    assert dsdt[8] == 2  # revision 2: 64-bit integers
    assert aml.name("\\_S5", [0, 0, 0, 0]) in dsdt
    assert dsdt.count(b"LNRO0005\x00") == 3
    for base, size, *_ in VIRTIO:
        assert aml.memory32_fixed(base, size) in dsdt
    assert aml.extended_interrupt(7, level=True) in dsdt
    assert b"COM1" in dsdt and aml.eisa_id("PNP0501") in dsdt


def test_tables_must_fit(memory):
    with pytest.raises(ConfigError):
        build_tables(memory, cpus=1, limit=0xE0100)
    with pytest.raises(ConfigError):
        layout_tables(0xDFFF0, cpus=1)  # would overlap the RSDP


def test_extra_tables_are_listed():
    mcfg = tables.sdt(b"MCFG", 1, bytes(8) + struct.pack("<QHBBI", 0xE000_0000, 0, 0, 0, 0))
    acpi = layout_tables(cpus=1, extra_tables=[mcfg])
    xsdt = acpi.tables["XSDT"][1]
    assert struct.unpack_from("<Q", xsdt, 36 + 16)[0] == acpi.tables["MCFG"][0]


# --- iasl ---------------------------------------------------------------------------------

IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl not installed (apt-get install -y acpica-tools)")
def test_iasl_disassembles_every_table_cleanly(tmp_path):
    acpi = layout_tables(cpus=2, virtio_mmio=VIRTIO)
    disassembled = {}
    # iasl 2020xxxx cannot read a binary RSDP (its signature is not a NameSeg); the RSDP
    # is checked field by field in test_every_checksum_is_right.
    for sig, (_gpa, data) in acpi.tables.items():
        if sig == "RSDP":
            continue
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(data)
        result = subprocess.run([IASL, "-d", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        for bad in ("Error", "Warning", "Invalid", "Unknown", "Incorrect checksum", "Bad"):
            assert bad not in output, f"{sig}: {output}"
        text = (tmp_path / f"{sig.lower()}.dsl").read_text()
        for bad in ("Error", "Warning", "Invalid", "**** Unknown", "Incorrect"):
            assert bad not in text, f"{sig}:\n{text}"
        disassembled[sig] = text
    dsdt = disassembled["DSDT"]
    assert "Name (\\_S5, Package (0x04)" in dsdt
    assert 'EisaId ("PNP0501")' in dsdt and "0x03F8" in dsdt and "{4}" in dsdt
    assert 'EisaId ("PNP0303")' in dsdt
    assert dsdt.count('Name (_HID, "LNRO0005")') == 3
    assert "0xD0001000," in dsdt
    assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )" in dsdt
    assert dsdt.count('"ACPI0007"') == 2
    fadt = disassembled["FACP"]
    assert "SCI Interrupt : 0009" in fadt
    assert "8042 Present on ports 60/64 (V2) : 1" in fadt
    assert "Hardware Reduced (V5) : 0" in fadt
    madt = disassembled["APIC"]
    assert madt.count("Processor Local APIC") == 2
    assert "Interrupt Source Override" in madt


ACPIEXEC = shutil.which("acpiexec")


@pytest.mark.skipif(ACPIEXEC is None, reason="acpiexec not installed (apt-get install -y acpica-tools)")
def test_acpiexec_loads_namespace_and_evaluates_s5(tmp_path):
    acpi = layout_tables(cpus=1, virtio_mmio=VIRTIO[:1])
    files = []
    for sig in ("FACP", "DSDT", "APIC", "FACS"):
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(acpi.tables[sig][1])
        files.append(str(path))
    result = subprocess.run(
        [ACPIEXEC, "-b", "evaluate \\_S5; evaluate \\_SB.VR00._HID; evaluate \\_SB.COM1._CRS", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert "[Package] Contains 4 Elements" in out, out
    assert '"LNRO0005"' in out, out
    assert "47 01 F8 03 F8 03 01 08 22 10 00 79" in out, out
    assert "AE_AML" not in out and "AE_NOT_FOUND" not in out, out


def test_extra_devices_go_under_sb():
    pci = aml.device("PCI0", aml.name("_HID", aml.eisa_id("PNP0A08")), aml.name("_UID", 0))
    dsdt = layout_tables(cpus=1, extra_devices=[pci]).tables["DSDT"][1]
    assert pci in dsdt

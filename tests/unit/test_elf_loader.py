"""The ELF64 PVH loader: what lands in guest RAM, the hvm_start_info the guest reads, and refusals.

Images are assembled here with ``struct`` so that each test controls every header field.
"""
import struct

import pytest

from xvm.errors import BootError
from xvm.kvm.memory import GuestMemory
from xvm.machine import layout
from xvm.machine.boot.elf import ElfImage, is_elf, load_pvh
from xvm.machine.boot.plan import CpuMode

MiB = 1 << 20
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
START_INFO = struct.Struct("<IIIIQQQQII")
MODLIST_ENTRY = struct.Struct("<QQQQ")
MEMMAP_ENTRY = struct.Struct("<QQII")
PT_LOAD, PT_NOTE = 1, 4
EM_X86_64, EM_386, EM_AARCH64 = 62, 3, 183
XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578

KERNEL = 0x100000
ENTRY = KERNEL + 0x40
TEXT = bytes(range(256)) * 4  # 1 KiB of recognisable "code"
DATA = b"initialised data"


def note(name, note_type, desc):
    name += b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def pvh_note(entry=ENTRY, width=4):
    return note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, entry.to_bytes(width, "little"))


def build_elf(segments, notes=(), *, ident_class=2, ident_data=1, machine=EM_X86_64, entry=0xFFFFFFFF81000000):
    """An ELF64 executable: ``segments`` are ``(paddr, file_bytes, memsz)``, ``notes`` raw note blobs.

    Layout: ELF header, program headers, note payloads, segment payloads.
    """
    phnum = len(notes) + len(segments)
    offset = EHDR.size + phnum * PHDR.size
    phdrs, payload = [], b""
    for blob in notes:
        phdrs.append(PHDR.pack(PT_NOTE, 4, offset + len(payload), 0, 0, len(blob), len(blob), 4))
        payload += blob
    for paddr, contents, memsz in segments:
        at = offset + len(payload)
        phdrs.append(PHDR.pack(PT_LOAD, 5, at, paddr + 0xFFFFFFFF80000000, paddr, len(contents), memsz, 0x1000))
        payload += contents
    ident = b"\x7fELF" + bytes([ident_class, ident_data, 1]) + bytes(9)
    ehdr = EHDR.pack(ident, 2, machine, 1, entry, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 64, 0, 0)
    return ehdr + b"".join(phdrs) + payload


def kernel_image(**kw):
    """A typical kernel: text, then data followed by bss, and a PVH note."""
    segments = kw.pop("segments", [(KERNEL, TEXT, len(TEXT)), (KERNEL + 0x1000, DATA, 0x3000)])
    notes = kw.pop("notes", [pvh_note()])
    return build_elf(segments, notes, **kw)


@pytest.fixture
def ram():
    """(memory, memory_bytes): 16 MiB of guest RAM laid out as the machine does, the low 2 MiB 0xCC."""
    memory_bytes = 16 * MiB
    memory = GuestMemory.create(layout.ram_ranges(memory_bytes))
    memory.fill(0, 2 * MiB, 0xCC)  # so that zero-filling and stray writes are visible
    yield memory, memory_bytes
    memory.close()


def start_info(memory):
    return START_INFO.unpack(memory.read(layout.BOOT_INFO, START_INFO.size))


def test_valid_image_loads_segments_and_zero_fills_bss(ram):
    memory, memory_bytes = ram
    load_pvh(memory, ElfImage(kernel_image()), memory_bytes=memory_bytes)
    assert memory.read(KERNEL, len(TEXT)) == TEXT
    assert memory.read(KERNEL + 0x1000, len(DATA)) == DATA
    assert memory.read(KERNEL + 0x1000 + len(DATA), 0x3000 - len(DATA)) == bytes(0x3000 - len(DATA))
    # bytes outside the segments are not touched
    assert memory.read(KERNEL + len(TEXT), 1) == b"\xcc"
    assert memory.read(KERNEL + 0x4000, 1) == b"\xcc"


def test_plan_enters_at_the_pvh_entry_with_rbx_at_start_info(ram):
    memory, memory_bytes = ram
    plan = load_pvh(memory, ElfImage(kernel_image()), memory_bytes=memory_bytes)
    assert plan.mode is CpuMode.PROTECTED_32
    assert plan.entry == ENTRY  # the PVH note, not e_entry (a 64-bit virtual address)
    assert plan.registers == {"rbx": layout.BOOT_INFO}
    assert plan.kernel_end == KERNEL + 0x4000


def test_start_info_header(ram):
    memory, memory_bytes = ram
    load_pvh(memory, ElfImage(kernel_image()), cmdline=b"console=ttyS0 quiet", memory_bytes=memory_bytes, rsdp=0xE0000)
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved = start_info(memory)
    assert magic == HVM_START_MAGIC
    assert version == 1  # version 1 has the memory map fields
    assert (flags, nr_modules, modlist, reserved) == (0, 0, 0, 0)
    assert rsdp == 0xE0000
    assert memory.read(cmdline, 20) == b"console=ttyS0 quiet\0"
    assert memmap and entries


@pytest.mark.parametrize("memory_mib", [16, 64, 3 * 1024 + 512])
def test_memmap_matches_the_e820_map(memory_mib):
    memory_bytes = memory_mib * MiB
    with GuestMemory.create(layout.ram_ranges(memory_bytes)) as memory:
        load_pvh(memory, ElfImage(kernel_image()), memory_bytes=memory_bytes)
        *_, memmap, entries, _ = start_info(memory)
        raw = memory.read(memmap, entries * MEMMAP_ENTRY.size)
    got = [MEMMAP_ENTRY.unpack_from(raw, i * MEMMAP_ENTRY.size) for i in range(entries)]
    assert [(a, s, t) for a, s, t, _ in got] == layout.e820_map(memory_bytes)
    assert all(reserved == 0 for *_, reserved in got)
    ram_total = sum(s for _, s, t, _ in got if t == 1)
    assert ram_total == memory_bytes - (layout.KERNEL_MIN_ADDRESS - layout.EBDA_START)


def test_empty_cmdline_is_an_empty_string(ram):
    memory, memory_bytes = ram
    load_pvh(memory, ElfImage(kernel_image()), memory_bytes=memory_bytes)
    assert memory.read(start_info(memory)[5], 1) == b"\0"


def test_longest_cmdline_fits(ram):
    memory, memory_bytes = ram
    cmdline = b"x" * (layout.BOOT_CMDLINE_MAX - 1)
    load_pvh(memory, ElfImage(kernel_image()), cmdline=cmdline, memory_bytes=memory_bytes)
    assert memory.read(layout.BOOT_CMDLINE, len(cmdline) + 1) == cmdline + b"\0"


def test_initrd_is_placed_and_listed_as_module(ram):
    memory, memory_bytes = ram
    initrd = b"070701" + bytes(range(256)) * 40
    load_pvh(memory, ElfImage(kernel_image()), initrd=initrd, memory_bytes=memory_bytes)
    _, _, _, nr_modules, modlist, *_ = start_info(memory)
    assert nr_modules == 1
    paddr, size, cmdline, reserved = MODLIST_ENTRY.unpack(memory.read(modlist, MODLIST_ENTRY.size))
    assert size == len(initrd) and (cmdline, reserved) == (0, 0)
    assert memory.read(paddr, size) == initrd
    assert paddr % 4096 == 0
    assert paddr >= KERNEL + 0x4000 and paddr + size <= memory_bytes  # beside the kernel, inside RAM
    # the modlist entry does not overlap the start info or the memory map
    assert layout.BOOT_INFO + START_INFO.size <= modlist
    assert modlist + MODLIST_ENTRY.size <= layout.BOOT_MEMMAP


def test_pvh_note_with_64_bit_descriptor(ram):
    # Linux writes the PHYS32_ENTRY note with _ASM_PTR, i.e. 8 bytes on x86-64.
    memory, memory_bytes = ram
    image = ElfImage(kernel_image(notes=[note(b"GNU", 3, b"build-id"), pvh_note(ENTRY + 8, width=8)]))
    assert image.pvh_entry == ENTRY + 8
    assert load_pvh(memory, image, memory_bytes=memory_bytes).entry == ENTRY + 8


def test_entry_in_bss_counts_as_inside_the_image(ram):
    memory, memory_bytes = ram
    image = ElfImage(kernel_image(notes=[pvh_note(KERNEL + 0x3FFF)]))
    assert load_pvh(memory, image, memory_bytes=memory_bytes).entry == KERNEL + 0x3FFF


def test_is_elf():
    assert is_elf(kernel_image()[:4])
    assert not is_elf(b"MZ\x90\x00")


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x7fELF", b"MZ" + bytes(200), b"#!/bin/sh\n" + bytes(100)])
def test_not_elf(data):
    with pytest.raises(BootError, match=r"^vmlinuz: not an ELF file$"):
        ElfImage(data, "vmlinuz")


def test_32_bit_elf():
    with pytest.raises(BootError, match="not a 64-bit little-endian x86-64 ELF file"):
        ElfImage(kernel_image(ident_class=1), "vmlinux")


def test_big_endian_elf():
    with pytest.raises(BootError, match="not a 64-bit little-endian x86-64 ELF file"):
        ElfImage(kernel_image(ident_data=2), "vmlinux")


@pytest.mark.parametrize("machine", [EM_386, EM_AARCH64, 0])
def test_wrong_machine(machine):
    with pytest.raises(BootError, match="^Image: not a 64-bit little-endian x86-64 ELF file$"):
        ElfImage(kernel_image(machine=machine), "Image")


def test_truncated_program_headers():
    data = kernel_image()
    cut = EHDR.size + PHDR.size + 10  # in the middle of the second program header
    with pytest.raises(BootError, match="^vmlinux: corrupt ELF program header table$"):
        ElfImage(data[:cut], "vmlinux")


def test_segment_beyond_the_end_of_the_file():
    data = kernel_image()
    with pytest.raises(BootError, match=r"vmlinux: ELF segment 2 lies outside the file \(truncated image\?\)"):
        ElfImage(data[: len(data) - 1], "vmlinux")  # the last byte of DATA is missing


def test_corrupt_note():
    bad = struct.pack("<III", 4, 400, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + bytes(4)
    with pytest.raises(BootError, match="corrupt ELF note"):
        ElfImage(kernel_image(notes=[bad]))


def test_nothing_to_load():
    with pytest.raises(BootError, match="ELF file has nothing to load"):
        ElfImage(build_elf([], [pvh_note()]))


@pytest.mark.parametrize(
    "notes",
    [
        [],
        [note(b"GNU", XEN_ELFNOTE_PHYS32_ENTRY, ENTRY.to_bytes(4, "little"))],  # right type, wrong owner
        [note(b"Xen", 1, ENTRY.to_bytes(4, "little"))],  # Xen note of another type
    ],
    ids=["no-notes", "gnu-type-18", "xen-other-type"],
)
def test_no_pvh_note(ram, notes):
    memory, memory_bytes = ram
    image = ElfImage(kernel_image(notes=notes), "bzImage.elf")
    with pytest.raises(BootError, match=r"bzImage.elf: ELF kernel has no PVH entry note \(XEN_ELFNOTE_PHYS32_ENTRY\)"):
        load_pvh(memory, image, memory_bytes=memory_bytes)


@pytest.mark.parametrize("entry", [KERNEL - 1, KERNEL + 0x4000, KERNEL + len(TEXT) + 0x100000, 0])
def test_entry_outside_the_image(ram, entry):
    memory, memory_bytes = ram
    with pytest.raises(BootError, match=f"vmlinux: PVH entry {entry:#x} is outside the loaded image"):
        load_pvh(memory, ElfImage(kernel_image(notes=[pvh_note(entry)]), "vmlinux"), memory_bytes=memory_bytes)


@pytest.mark.parametrize(
    "paddr,memsz",
    [
        (16 * MiB, 0x1000),  # just past the end of RAM
        (16 * MiB - 0x1000, 0x1001),  # bss sticking out by one byte
        (0x8000, 0x1000),  # below 1 MiB: would overwrite the boot structures
        (layout.BOOT_INFO, 0x100),
    ],
)
def test_segment_outside_ram(ram, paddr, memsz):
    memory, memory_bytes = ram
    segments = [(KERNEL, TEXT, len(TEXT)), (paddr, b"", memsz)]
    image = ElfImage(kernel_image(segments=segments), "vmlinux")
    with pytest.raises(BootError, match=rf"vmlinux: segment at {paddr:#x}\+{memsz:#x} does not fit in guest RAM \(16 MiB\)"):
        load_pvh(memory, image, memory_bytes=memory_bytes)
    assert memory.read(layout.BOOT_INFO, 4) == b"\xcc" * 4  # no start info for a refused kernel


def test_segment_ending_exactly_at_the_end_of_ram_fits(ram):
    memory, memory_bytes = ram
    segments = [(KERNEL, TEXT, len(TEXT)), (16 * MiB - 0x1000, b"end", 0x1000)]
    load_pvh(memory, ElfImage(kernel_image(segments=segments)), memory_bytes=memory_bytes)
    assert memory.read(16 * MiB - 0x1000, 4) == b"end\0"


def test_command_line_too_long(ram):
    memory, memory_bytes = ram
    with pytest.raises(BootError, match="^kernel command line is 4096 bytes; the limit is 4095$"):
        load_pvh(memory, ElfImage(kernel_image()), cmdline=b"x" * 4096, memory_bytes=memory_bytes)


def test_initrd_too_large(ram):
    memory, memory_bytes = ram
    initrd = bytes(15 * MiB)  # RAM is 16 MiB and the kernel ends at 1 MiB + 16 KiB
    with pytest.raises(BootError, match="^initrd of 15 MiB does not fit in 16 MiB of guest RAM beside the kernel$"):
        load_pvh(memory, ElfImage(kernel_image()), initrd=initrd, memory_bytes=memory_bytes)


def test_initrd_larger_than_ram(ram):
    memory, memory_bytes = ram
    with pytest.raises(BootError, match="does not fit in 16 MiB of guest RAM"):
        load_pvh(memory, ElfImage(kernel_image()), initrd=bytes(17 * MiB), memory_bytes=memory_bytes)


def test_largest_initrd_that_fits(ram):
    memory, memory_bytes = ram
    size = 16 * MiB - (KERNEL + 0x4000)
    load_pvh(memory, ElfImage(kernel_image()), initrd=b"\x5a" * size, memory_bytes=memory_bytes)
    modlist = start_info(memory)[4]
    paddr, got_size, _, _ = MODLIST_ENTRY.unpack(memory.read(modlist, MODLIST_ENTRY.size))
    assert (paddr, got_size) == (KERNEL + 0x4000, size)


def test_boot_errors_are_config_errors():
    # A bad kernel is the caller's fault: nothing was started.
    from xvm.errors import ConfigError

    with pytest.raises(ConfigError):
        ElfImage(b"junk")

"""The Linux bzImage loader: setup header validation, placement, zero page, entry plan."""
import glob
import os
import struct

import pytest

from xvm.errors import BootError
from xvm.kvm.memory import GuestMemory
from xvm.machine import layout
from xvm.machine.boot import bootparams as bp
from xvm.machine.boot.linux import BzImage, KernelFormat, e820_from_ram, kernel_format, load_bzimage
from xvm.machine.boot.plan import CpuMode

MiB = 1 << 20
GiB = 1 << 30


def fake_bzimage(
    *,
    version=0x020F,
    setup_sects=4,
    loadflags=bp.LOADED_HIGH,
    xloadflags=bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G,
    payload=None,
    pref_address=16 * MiB,
    init_size=4 * MiB,
    kernel_alignment=2 * MiB,
    relocatable=1,
    min_alignment=21,
    cmdline_size=2047,
    initrd_addr_max=0x7FFF_FFFF,
    header_end=0x26C,
    syssize=None,
):
    """A structurally valid bzImage: boot sector + setup header + setup sectors + payload."""
    if payload is None:
        payload = bytes(range(256)) * 256  # 64 KiB, recognisable
    setup = bytearray((setup_sects + 1) * 512)
    hdr = bp.ffi.new("struct setup_header *")
    hdr.setup_sects = setup_sects
    hdr.syssize = len(payload) // 16 if syssize is None else syssize
    hdr.boot_flag = bp.BOOT_FLAG
    hdr.jump = 0xEB | ((header_end - 0x202) << 8)
    hdr.header = bp.HDRS_MAGIC
    hdr.version = version
    hdr.loadflags = loadflags
    hdr.code32_start = 0x100000
    hdr.kernel_version = 0x200
    hdr.initrd_addr_max = initrd_addr_max
    hdr.kernel_alignment = kernel_alignment
    hdr.relocatable_kernel = relocatable
    hdr.min_alignment = min_alignment
    hdr.xloadflags = xloadflags
    hdr.cmdline_size = cmdline_size
    hdr.pref_address = pref_address
    hdr.init_size = init_size
    raw = bytes(bp.ffi.buffer(hdr))
    setup[0x1F1 : 0x1F1 + len(raw)] = raw
    return bytes(setup) + payload


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 64 * MiB)]) as mem:
        yield mem


def zero_page(memory):
    params = bp.ffi.new("struct boot_params *")
    bp.ffi.memmove(params, memory.read(layout.BOOT_INFO, bp.BOOT_PARAMS_SIZE), bp.BOOT_PARAMS_SIZE)
    return params


# --- layout of the cffi declarations ------------------------------------------------------


def test_zero_page_offsets_match_boot_protocol():
    off = bp.ffi.offsetof
    assert bp.ffi.sizeof("struct boot_params") == 4096
    assert off("struct boot_params", "acpi_rsdp_addr") == 0x070
    assert off("struct boot_params", "ext_ramdisk_image") == 0x0C0
    assert off("struct boot_params", "ext_cmd_line_ptr") == 0x0C8
    assert off("struct boot_params", "e820_entries") == 0x1E8
    assert off("struct boot_params", "sentinel") == 0x1EF
    assert off("struct boot_params", "hdr") == 0x1F1
    assert off("struct boot_params", "e820_table") == 0x2D0
    assert off("struct boot_params", "eddbuf") == 0xD00
    assert bp.ffi.sizeof("struct boot_e820_entry") == 20
    header_fields = {
        "setup_sects": 0x1F1, "syssize": 0x1F4, "vid_mode": 0x1FA, "boot_flag": 0x1FE, "jump": 0x200,
        "header": 0x202, "version": 0x206, "type_of_loader": 0x210, "loadflags": 0x211,
        "code32_start": 0x214, "ramdisk_image": 0x218, "ramdisk_size": 0x21C, "heap_end_ptr": 0x224,
        "cmd_line_ptr": 0x228, "initrd_addr_max": 0x22C, "kernel_alignment": 0x230,
        "relocatable_kernel": 0x234, "min_alignment": 0x235, "xloadflags": 0x236, "cmdline_size": 0x238,
        "hardware_subarch": 0x23C, "setup_data": 0x250, "pref_address": 0x258, "init_size": 0x260,
        "handover_offset": 0x264, "kernel_info_offset": 0x268,
    }  # fmt: skip
    for name, offset in header_fields.items():
        assert 0x1F1 + off("struct setup_header", name) == offset, name


# --- format detection and validation ------------------------------------------------------


def test_kernel_format():
    assert kernel_format(fake_bzimage()) is KernelFormat.BZIMAGE
    assert kernel_format(b"\x7fELF\x02\x01\x01" + bytes(100)) is KernelFormat.ELF
    with pytest.raises(BootError, match="not a Linux kernel"):
        kernel_format(b"#!/bin/sh\necho hi\n" + bytes(1000))
    with pytest.raises(BootError, match="gzip"):
        kernel_format(b"\x1f\x8b\x08" + bytes(1000))
    with pytest.raises(BootError, match="not a Linux kernel"):
        kernel_format(b"")


def test_garbage_is_no_kernel(memory):
    with pytest.raises(BootError, match="not a Linux kernel"):
        load_bzimage(memory, os.urandom(4096))
    with pytest.raises(BootError, match="too short"):
        load_bzimage(memory, b"MZ")


def test_boot_flag_and_magic_required():
    image = bytearray(fake_bzimage())
    image[0x1FE:0x200] = b"\0\0"
    with pytest.raises(BootError, match="not a Linux kernel"):
        BzImage(bytes(image))
    image = bytearray(fake_bzimage())
    image[0x202:0x206] = b"HdrX"
    with pytest.raises(BootError, match="not a Linux kernel"):
        BzImage(bytes(image))


def test_elf_is_sent_to_pvh_loader():
    with pytest.raises(BootError, match="PVH"):
        BzImage(b"\x7fELF" + bytes(4096))


def test_old_protocol_rejected():
    with pytest.raises(BootError, match=r"boot protocol 2\.05 is too old.*2\.06"):
        BzImage(fake_bzimage(version=0x0205))


def test_zimage_rejected():
    with pytest.raises(BootError, match="zImage"):
        BzImage(fake_bzimage(loadflags=0))


def test_truncated_image_rejected():
    image = fake_bzimage()
    with pytest.raises(BootError, match="truncated"):
        BzImage(image[:-4096])
    with pytest.raises(BootError, match="truncated"):
        BzImage(image[: 5 * 512])


def test_setup_sects_zero_means_four():
    image = BzImage(fake_bzimage(setup_sects=4)[:0x1F1] + b"\0" + fake_bzimage(setup_sects=4)[0x1F2:])
    assert image.header.setup_sects == 4 and image.header.setup_size == 5 * 512


def test_missing_file(memory, tmp_path):
    with pytest.raises(BootError, match="cannot read the kernel"):
        load_bzimage(memory, tmp_path / "nope")
    with pytest.raises(BootError, match="cannot read the initrd"):
        load_bzimage(memory, fake_bzimage(), initrd=tmp_path / "nope")


# --- placement and the zero page ----------------------------------------------------------


def test_64bit_plan_and_zero_page(memory):
    image = fake_bzimage()
    initrd = os.urandom(3 * MiB + 123)
    plan = load_bzimage(memory, image, cmdline="console=ttyS0 quiet", initrd=initrd, rsdp=0xE0000)
    load = 16 * MiB
    assert plan.mode is CpuMode.LONG_64
    assert plan.entry == load + 0x200
    assert plan.registers == {"rsi": layout.BOOT_INFO}
    assert (plan.code_selector, plan.data_selector) == (0x10, 0x18)
    assert plan.kernel_end == load + 4 * MiB
    # the protected-mode kernel is at its preferred address
    payload = image[5 * 512 :]
    assert memory.read(load, len(payload)) == payload

    params = zero_page(memory)
    h = params.hdr
    assert h.boot_flag == 0xAA55 and h.header == bp.HDRS_MAGIC and h.version == 0x020F
    assert h.type_of_loader == 0xFF
    assert h.loadflags & bp.LOADED_HIGH and h.loadflags & bp.CAN_USE_HEAP
    assert not h.loadflags & bp.KEEP_SEGMENTS
    assert h.heap_end_ptr == 0xFE00
    assert h.vid_mode == 0xFFFF
    assert h.code32_start == load
    assert h.kernel_alignment == 2 * MiB and h.init_size == 4 * MiB  # copied from the image
    assert h.cmd_line_ptr == layout.BOOT_CMDLINE
    assert memory.read(layout.BOOT_CMDLINE, 20) == b"console=ttyS0 quiet\0"
    assert params.acpi_rsdp_addr == 0xE0000
    assert params.sentinel == 0
    # initrd: high, page aligned, below RAM top and initrd_addr_max, after the kernel
    assert h.ramdisk_size == len(initrd)
    assert h.ramdisk_image % 4096 == 0
    assert h.ramdisk_image + len(initrd) <= 64 * MiB
    assert h.ramdisk_image + len(initrd) > 64 * MiB - 4096
    assert h.ramdisk_image >= plan.kernel_end
    assert memory.read(h.ramdisk_image, len(initrd)) == initrd
    # e820: the PC holes
    e820 = [(params.e820_table[i].addr, params.e820_table[i].size, params.e820_table[i].type)
            for i in range(params.e820_entries)]  # fmt: skip
    assert e820 == [
        (0, layout.EBDA_START, 1),
        (layout.EBDA_START, 1 * MiB - layout.EBDA_START, 2),
        (1 * MiB, 63 * MiB, 1),
    ]


def test_64bit_page_tables_and_gdt(memory):
    plan = load_bzimage(memory, fake_bzimage())
    assert plan.cr3 == layout.BOOT_PAGE_TABLES
    pml4e = memory.read_u64(plan.cr3)
    pdpt = pml4e & ~0xFFF
    assert pml4e & 0x7 == 0x7  # present, writable, user (PVM contract)
    for i in range(4):
        pdpte = memory.read_u64(pdpt + 8 * i)
        assert pdpte & 0x7 == 0x7
        pd = pdpte & ~0xFFF
        for j in (0, 8, 511):
            pde = memory.read_u64(pd + 8 * j)
            assert pde & ~0xFFF == (i * 512 + j) << 21  # identity
            assert pde & 0x87 == 0x87  # 2 MiB page, present, writable, user
    assert memory.read_u64(plan.cr3 + 8) == 0  # nothing else mapped
    gdt = struct.unpack("<4Q", memory.read(plan.gdt, 32))
    assert plan.gdt_limit == 31
    code, data = gdt[0x10 // 8], gdt[0x18 // 8]
    assert (code >> 40) & 0xFF == 0x9B and (code >> 53) & 1 == 1  # present code, L=1
    assert (data >> 40) & 0xFF == 0x93
    assert gdt[0] == 0


def test_32bit_entry_for_kernels_without_xlf_kernel_64(memory):
    plan = load_bzimage(memory, fake_bzimage(version=0x020A, xloadflags=0))
    assert plan.mode is CpuMode.PROTECTED_32
    assert plan.entry == 16 * MiB and plan.cr3 == 0
    assert plan.registers == {"rsi": layout.BOOT_INFO}
    code = memory.read_u64(plan.gdt + 0x10)
    assert (code >> 53) & 1 == 0 and (code >> 54) & 1 == 1  # L=0, D=1
    # 2.12+ without XLF_KERNEL_64 also takes the 32-bit entry
    assert load_bzimage(memory, fake_bzimage(xloadflags=0)).mode is CpuMode.PROTECTED_32


def test_pre_2_10_kernel_loads_at_1mib(memory):
    plan = load_bzimage(memory, fake_bzimage(version=0x0206, xloadflags=0, relocatable=0))
    assert plan.entry == 1 * MiB
    assert zero_page(memory).hdr.code32_start == 1 * MiB


def test_relocatable_kernel_moves_down_when_memory_is_small():
    with GuestMemory.create([(0, 12 * MiB)]) as small:
        plan = load_bzimage(small, fake_bzimage(init_size=6 * MiB))
        assert plan.entry == 2 * MiB + 0x200  # 1 MiB aligned up to kernel_alignment
        with pytest.raises(BootError, match="does not fit"):
            load_bzimage(small, fake_bzimage(init_size=6 * MiB, relocatable=0))


def test_kernel_too_large(memory):
    with pytest.raises(BootError, match=r"kernel needs 128 MiB.*64 MiB of guest memory"):
        load_bzimage(memory, fake_bzimage(init_size=128 * MiB))


def test_initrd_too_large(memory):
    with pytest.raises(BootError, match="initrd of 60.0 MiB does not fit"):
        load_bzimage(memory, fake_bzimage(), initrd=bytes(60 * MiB))


def test_initrd_below_kernel_when_no_room_above():
    with GuestMemory.create([(0, 24 * MiB)]) as mem:
        plan = load_bzimage(mem, fake_bzimage(init_size=8 * MiB), initrd=bytes(5 * MiB))
        h = zero_page(mem).hdr
        assert h.ramdisk_image + h.ramdisk_size <= 16 * MiB
        assert h.ramdisk_image >= 1 * MiB and plan.kernel_end == 24 * MiB


def test_initrd_respects_initrd_addr_max():
    with GuestMemory.create([(0, 1 * GiB)]) as mem:
        load_bzimage(mem, fake_bzimage(initrd_addr_max=0x37FF_FFFF), initrd=bytes(MiB))
        h = zero_page(mem).hdr
        assert h.ramdisk_image + h.ramdisk_size <= 0x3800_0000
        assert h.ramdisk_image == 0x3800_0000 - MiB


def test_command_line_limits(memory):
    with pytest.raises(BootError, match="command line is 300 bytes; this kernel accepts 255"):
        load_bzimage(memory, fake_bzimage(cmdline_size=255), cmdline="x" * 300)
    with pytest.raises(BootError, match="NUL"):
        load_bzimage(memory, fake_bzimage(), cmdline=b"a\0b")
    load_bzimage(memory, fake_bzimage(cmdline_size=255), cmdline="y" * 255)
    assert memory.read(layout.BOOT_CMDLINE, 256) == b"y" * 255 + b"\0"


def test_e820_from_ram_with_high_memory():
    e820 = e820_from_ram([(0, 3 * GiB), (4 * GiB, 2 * GiB)])
    assert e820 == [
        (0, layout.EBDA_START, 1),
        (layout.EBDA_START, MiB - layout.EBDA_START, 2),
        (MiB, 3 * GiB - MiB, 1),
        (4 * GiB, 2 * GiB, 1),
    ]


def test_explicit_e820_is_used(memory):
    e820 = [(0, 0x9F000, 1), (0x9F000, 0x61000, 2), (MiB, 31 * MiB, 1)]
    load_bzimage(memory, fake_bzimage(), initrd=bytes(MiB), e820=e820)
    params = zero_page(memory)
    assert params.e820_entries == 3
    assert params.hdr.ramdisk_image + MiB <= 32 * MiB  # only the RAM the map offers


# --- a real kernel, when one is around ----------------------------------------------------


def _real_kernels():
    patterns = [
        os.environ.get("XVM_TEST_BZIMAGE", ""),
        os.path.join(os.environ.get("XVM_CACHE", "/var/cache/xvm"), "**", "vmlinuz-*"),
        "/boot/vmlinuz-*",
        "/tmp/xvm-kern*/**/vmlinuz-*",
    ]
    found = []
    for pattern in filter(None, patterns):
        found += [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    return found


REAL_KERNELS = _real_kernels()


@pytest.mark.skipif(
    not REAL_KERNELS,
    reason="no bzImage found: set XVM_TEST_BZIMAGE or run scripts/setup-testhost.sh (fills /var/cache/xvm)",
)
def test_real_debian_kernel():
    path = REAL_KERNELS[0]
    with open(path, "rb") as f:
        data = f.read()
    assert kernel_format(data, path) is KernelFormat.BZIMAGE
    image = BzImage(data, path)
    hdr = image.header
    assert hdr.version >= 0x020C and hdr.has_64bit_entry, hdr
    assert hdr.relocatable and hdr.pref_address >= MiB and hdr.init_size > len(image.kernel)
    with GuestMemory.create([(0, 512 * MiB)]) as mem:
        plan = load_bzimage(mem, image, cmdline="console=ttyS0 panic=-1", initrd=b"\0" * 4096, rsdp=0xE0000)
        assert plan.mode is CpuMode.LONG_64
        assert plan.entry == hdr.pref_address + 0x200
        assert plan.kernel_end == hdr.pref_address + hdr.init_size
        assert mem.read(hdr.pref_address, 4096) == bytes(image.kernel[:4096])
        params = zero_page(mem)
        assert params.hdr.version == hdr.version and params.hdr.type_of_loader == 0xFF
        assert params.acpi_rsdp_addr == 0xE0000
        assert params.hdr.ramdisk_image + 4096 <= min(512 * MiB, hdr.initrd_addr_max + 1)

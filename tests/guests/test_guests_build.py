"""Unit tests (no /dev/kvm): every test guest builds into a bootable PVH ELF64 image."""
from __future__ import annotations

import os
import shutil
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import build as guest_build  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None, reason="gcc not installed")

PT_LOAD, PT_NOTE = 1, 4
EM_X86_64 = 62
XEN_ELFNOTE_PHYS32_ENTRY = 18
LOAD_ADDRESS = 0x100000


def parse_elf(data: bytes) -> dict:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 2, "not ELF64"
    assert data[5] == 1, "not little-endian"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    e_phoff, = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads, notes = [], []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            loads.append((p_paddr, p_filesz, p_memsz, p_offset))
        elif p_type == PT_NOTE:
            off, end = p_offset, p_offset + p_filesz
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", data, off)
                name = data[off + 12:off + 12 + namesz]
                desc_off = off + 12 + ((namesz + 3) & ~3)
                notes.append((name, ntype, data[desc_off:desc_off + descsz]))
                off = desc_off + ((descsz + 3) & ~3)
    return {"machine": e_machine, "loads": loads, "notes": notes}


@pytest.mark.parametrize("name", guest_build.GUESTS)
def test_guest_is_pvh_elf64(name):
    image = guest_build.build(name)
    elf = parse_elf(image.read_bytes())
    assert elf["machine"] == EM_X86_64
    assert elf["loads"], "no PT_LOAD segment"
    assert min(paddr for paddr, *_ in elf["loads"]) == LOAD_ADDRESS
    entries = [desc for nname, ntype, desc in elf["notes"]
               if nname == b"Xen\0" and ntype == XEN_ELFNOTE_PHYS32_ENTRY]
    assert len(entries) == 1, "expected exactly one XEN_ELFNOTE_PHYS32_ENTRY note"
    assert len(entries[0]) >= 4
    (entry,) = struct.unpack_from("<I", entries[0])
    assert any(paddr <= entry < paddr + filesz for paddr, filesz, _, _ in elf["loads"]), \
        f"PVH entry {entry:#x} is not inside a PT_LOAD segment"


def test_build_is_cached(tmp_path):
    first = guest_build.build("hello", tmp_path)
    mtime = first.stat().st_mtime_ns
    again = guest_build.build("hello", tmp_path)
    assert again == first
    assert again.stat().st_mtime_ns == mtime


def test_rebuilds_when_source_is_newer(tmp_path):
    image = guest_build.build("hello", tmp_path)
    old = image.stat().st_mtime - 3600
    os.utime(image, (old, old))
    rebuilt = guest_build.build("hello", tmp_path)
    assert rebuilt.stat().st_mtime > old


def test_unknown_guest_is_rejected():
    with pytest.raises(ValueError):
        guest_build.build("no-such-guest")


def test_page_tables_follow_pvm_contract():
    """Every present entry has U/S=1 and PML4 slot 256 is empty (read from the image)."""
    image = guest_build.build("hello")
    data = image.read_bytes()
    elf = parse_elf(data)
    symbols = _symbols(image)
    paddr, filesz, _, offset = next(seg for seg in elf["loads"] if seg[0] == LOAD_ADDRESS)

    def table(addr):
        assert paddr <= addr and addr + 4096 <= paddr + filesz, "page table outside the image"
        return struct.unpack_from("<512Q", data, offset + addr - paddr)

    pml4 = table(symbols["pml4"])
    assert pml4[256] == 0
    seen = 0
    for e4 in pml4:
        if not e4 & 1:
            continue
        assert e4 & 4, "PML4 entry without U/S"
        for e3 in table(e4 & 0x000FFFFFFFFFF000):
            if not e3 & 1:
                continue
            assert e3 & 4, "PDPT entry without U/S"
            if e3 & 0x80:
                seen += 1 << 30
                continue
            for e2 in table(e3 & 0x000FFFFFFFFFF000):
                if e2 & 1:
                    assert e2 & 4 and e2 & 0x80, "PD entry without U/S (or not a 2 MiB page)"
                    seen += 1 << 21
    assert seen >= 4 << 30, "less than 4 GiB identity-mapped"


def _symbols(image) -> dict[str, int]:
    import subprocess
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run([nm, str(image)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}

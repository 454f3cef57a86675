"""ELF64 kernels booted through their PVH entry note (Xen PVH boot ABI).

The PVH ABI starts the boot CPU in flat 32-bit protected mode with paging off
at the address in the ELF note XEN_ELFNOTE_PHYS32_ENTRY, with %ebx pointing at
a ``struct hvm_start_info``.  The same images boot under QEMU's ``-kernel``.
"""
import struct

from ...errors import BootError
from .. import layout
from .plan import BootPlan, CpuMode

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

HVM_START_MAGIC = 0x336EC578
HVM_MEMMAP_TYPE_RAM = 1
_START_INFO = struct.Struct("<IIIIQQQQII")  # magic version flags nr_modules modlist cmdline rsdp memmap entries reserved
_MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr size cmdline_paddr reserved
_MEMMAP_ENTRY = struct.Struct("<QQII")  # addr size type reserved

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def is_elf(header):
    return header[:4] == ELF_MAGIC


class ElfImage:
    """A parsed, validated ELF64 x86-64 executable."""

    def __init__(self, data, path="kernel"):
        self.path = path
        if len(data) < _EHDR.size or not is_elf(data):
            raise BootError(f"{path}: not an ELF file")
        ident, _type, machine, _ver, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = _EHDR.unpack_from(data)
        if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or machine != EM_X86_64:
            raise BootError(f"{path}: not a 64-bit little-endian x86-64 ELF file")
        if phentsize != _PHDR.size or phoff + phnum * phentsize > len(data):
            raise BootError(f"{path}: corrupt ELF program header table")
        self.data = data
        self.segments = []  # (paddr, file bytes memoryview, memsz)
        self.pvh_entry = None
        for i in range(phnum):
            p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = _PHDR.unpack_from(data, phoff + i * phentsize)
            if offset + filesz > len(data):
                raise BootError(f"{path}: ELF segment {i} lies outside the file (truncated image?)")
            if filesz > memsz:
                raise BootError(f"{path}: ELF segment {i} has more file bytes than memory bytes")
            if p_type == PT_LOAD and memsz:
                self.segments.append((paddr, memoryview(data)[offset : offset + filesz], memsz))
            elif p_type == PT_NOTE:
                self._read_notes(memoryview(data)[offset : offset + filesz])
        if not self.segments:
            raise BootError(f"{path}: ELF file has nothing to load")

    def _read_notes(self, notes):
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, note_type = struct.unpack_from("<III", notes, pos)
            name_at = pos + 12
            desc_at = name_at + (namesz + 3 & ~3)
            end = desc_at + (descsz + 3 & ~3)
            if end > len(notes):
                raise BootError(f"{self.path}: corrupt ELF note")
            name = bytes(notes[name_at : name_at + namesz]).rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY and descsz >= 4:
                self.pvh_entry = struct.unpack_from("<I", notes, desc_at)[0]
            pos = end

    @property
    def end(self):
        return max(paddr + memsz for paddr, _, memsz in self.segments)


def load_pvh(memory, image, *, cmdline=b"", initrd=None, memory_bytes, rsdp=0):
    """Load ``image`` (an ElfImage) and its PVH start info; returns the BootPlan."""
    if image.pvh_entry is None:
        raise BootError(f"{image.path}: ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
    for paddr, contents, memsz in image.segments:
        if paddr < layout.KERNEL_MIN_ADDRESS or not memory.contains(paddr, memsz):
            raise BootError(
                f"{image.path}: segment at {paddr:#x}+{memsz:#x} does not fit in guest RAM "
                f"({memory_bytes >> 20} MiB)"
            )
        memory.write(paddr, contents)
        memory.fill(paddr + len(contents), memsz - len(contents))
    if not any(paddr <= image.pvh_entry < paddr + memsz for paddr, _, memsz in image.segments):
        raise BootError(f"{image.path}: PVH entry {image.pvh_entry:#x} is outside the loaded image")

    if len(cmdline) >= layout.BOOT_CMDLINE_MAX:
        raise BootError(f"kernel command line is {len(cmdline)} bytes; the limit is {layout.BOOT_CMDLINE_MAX - 1}")
    memory.write(layout.BOOT_CMDLINE, cmdline + b"\0")

    modlist, nr_modules = 0, 0
    if initrd is not None:
        initrd_at = _place_initrd(memory, image, initrd, memory_bytes)
        modlist = layout.BOOT_INFO + _START_INFO.size
        memory.write(modlist, _MODLIST_ENTRY.pack(initrd_at, len(initrd), 0, 0))
        nr_modules = 1

    e820 = layout.e820_map(memory_bytes)
    memory.write(
        layout.BOOT_MEMMAP,
        b"".join(_MEMMAP_ENTRY.pack(addr, size, kind, 0) for addr, size, kind in e820),
    )
    memory.write(
        layout.BOOT_INFO,
        _START_INFO.pack(
            HVM_START_MAGIC, 1, 0, nr_modules, modlist, layout.BOOT_CMDLINE, rsdp,
            layout.BOOT_MEMMAP, len(e820), 0,
        ),
    )
    return BootPlan(
        mode=CpuMode.PROTECTED_32,
        entry=image.pvh_entry,
        registers={"rbx": layout.BOOT_INFO},
        kernel_end=image.end,
    )


def _place_initrd(memory, image, initrd, memory_bytes):
    top = min(memory_bytes, layout.MMIO_HOLE_START)
    at = (top - len(initrd)) & ~0xFFF
    if at < image.end:
        raise BootError(
            f"initrd of {len(initrd) >> 20} MiB does not fit in {memory_bytes >> 20} MiB of guest RAM "
            "beside the kernel"
        )
    memory.write(at, initrd)
    return at

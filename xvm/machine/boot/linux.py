"""Linux bzImage loader: the x86 boot protocol (``Documentation/arch/x86/boot.rst``).

The loader parses and validates the real-mode setup header, places the
protected-mode kernel at its preferred address, the initrd high in low RAM and
the command line and the zero page (``struct boot_params``) in the boot area
below 1 MiB, and returns a :class:`~.plan.BootPlan`:

* protocol >= 2.12 with ``XLF_KERNEL_64``: the 64-bit entry (boot.rst "64-bit
  BOOT PROTOCOL"): long mode, ``rip = load address + 0x200``, ``rsi`` = zero
  page, identity-mapped page tables for the first 4 GiB, a GDT with
  ``__BOOT_CS`` = 0x10 and ``__BOOT_DS`` = 0x18;
* older kernels (>= 2.06): the 32-bit entry ("32-bit BOOT PROTOCOL"): flat
  protected mode, paging off, ``eip = code32_start``, ``esi`` = zero page.

An uncompressed ELF ``vmlinux`` boots through its PVH note (:mod:`.elf`);
:func:`kernel_format` tells the two apart from the first bytes.
"""
import enum
import os
import struct
from dataclasses import dataclass

from ...errors import BootError
from .. import layout
from . import bootparams as bp
from .plan import BootPlan, CpuMode

MIN_PROTOCOL = 0x0206  # cmdline_size (2.06); earlier kernels are not worth supporting
PROTOCOL_64BIT_ENTRY = 0x020C  # xloadflags / XLF_KERNEL_64 (2.12)
ENTRY_64_OFFSET = 0x200  # startup_64 = load address + 0x200
DEFAULT_LOAD_ADDRESS = 0x10_0000  # bzImage protected-mode code before 2.10 (no pref_address)
DEFAULT_INITRD_ADDR_MAX = 0x37FF_FFFF  # boot.rst: initrd_addr_max before 2.03
HEAP_END_PTR = 0xFE00  # setup heap end, relative to the (unused) real-mode segment
PAGE_SIZE = 0x1000
FOUR_GIB = 1 << 32

BOOT_CS = 0x10
BOOT_DS = 0x18
# GDT descriptors: flat 4 GiB, present, DPL 0, accessed.
GDT_CODE_64 = 0x00AF_9B00_0000_FFFF  # G=1 L=1 D=0, execute/read
GDT_CODE_32 = 0x00CF_9B00_0000_FFFF  # G=1 D=1, execute/read
GDT_DATA = 0x00CF_9300_0000_FFFF  # G=1 B=1, read/write
GDT_ENTRIES = 4  # null, unused, __BOOT_CS, __BOOT_DS

# Page-table entry bits.  U/S is set at every level so that the same tables also
# satisfy the PVM contract (see /work/shared/ENVIRONMENT.md); it is harmless elsewhere.
PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_USER = 1 << 2
PTE_PS = 1 << 7
_PTE_FLAGS = PTE_PRESENT | PTE_WRITE | PTE_USER
IDENTITY_MAP_SIZE = FOUR_GIB
PML4_GPA = layout.BOOT_PAGE_TABLES
PDPT_GPA = PML4_GPA + PAGE_SIZE
PD_GPA = PDPT_GPA + PAGE_SIZE  # four page directories, 2 MiB pages
PAGE_TABLES_END = PD_GPA + 4 * PAGE_SIZE

ELF_MAGIC = b"\x7fELF"
_GZIP_MAGIC = b"\x1f\x8b"


class KernelFormat(enum.Enum):
    BZIMAGE = "bzImage"
    ELF = "ELF"


def kernel_format(head, path="kernel"):
    """Tell a bzImage from an ELF ``vmlinux`` by its first 0x206+ bytes; raise BootError otherwise."""
    head = bytes(head[:0x210])
    if head[:4] == ELF_MAGIC:
        return KernelFormat.ELF
    if len(head) >= 0x206 and head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS":
        return KernelFormat.BZIMAGE
    if head[:2] == _GZIP_MAGIC:
        raise BootError(f"{path}: gzip-compressed file; decompress it or use the bzImage")
    raise BootError(f"{path}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)")


@dataclass(frozen=True)
class SetupHeader:
    """The fields of ``struct setup_header`` the loader acts on, already defaulted
    for the protocol version (boot.rst "DETAILS OF HEADER FIELDS")."""

    version: int
    setup_sects: int
    syssize: int
    loadflags: int
    xloadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    min_alignment: int
    cmdline_size: int
    pref_address: int
    init_size: int
    header_end: int  # offset of the first byte after the setup header in the image

    @property
    def version_string(self):
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def setup_size(self):
        """Bytes of real-mode code (boot sector included) before the protected-mode kernel."""
        return (self.setup_sects + 1) * 512

    @property
    def has_64bit_entry(self):
        return self.version >= PROTOCOL_64BIT_ENTRY and bool(self.xloadflags & bp.XLF_KERNEL_64)


class BzImage:
    """A parsed, validated bzImage: ``header``, ``kernel`` (the protected-mode payload)."""

    def __init__(self, data, path="kernel"):
        self.path = path
        self.data = memoryview(data)
        if len(data) < 0x250:
            raise BootError(f"{path}: not a Linux kernel ({len(data)} bytes is too short for a bzImage)")
        fmt = kernel_format(data, path)
        if fmt is KernelFormat.ELF:
            raise BootError(f"{path}: an ELF vmlinux, not a bzImage: boot it through its PVH note")
        raw = bp.ffi.new("struct setup_header *")
        size = bp.ffi.sizeof(raw[0])
        bp.ffi.memmove(raw, bytes(data[bp.SETUP_HEADER_OFFSET : bp.SETUP_HEADER_OFFSET + size]), size)
        version = raw.version
        if version < MIN_PROTOCOL:
            raise BootError(
                f"{path}: boot protocol {version >> 8}.{version & 0xFF:02d} is too old; "
                f"xvm needs {MIN_PROTOCOL >> 8}.{MIN_PROTOCOL & 0xFF:02d} or later"
            )
        if not raw.loadflags & bp.LOADED_HIGH:
            raise BootError(f"{path}: a zImage (loaded at 0x10000), not a bzImage; rebuild as bzImage")
        setup_sects = raw.setup_sects or 4  # boot.rst: 0 means 4
        header_end = 0x202 + data[0x201]  # boot.rst: end of header = 0x0202 + byte at 0x0201
        has_2_10 = version >= 0x020A
        self.header = SetupHeader(
            version=version,
            setup_sects=setup_sects,
            syssize=raw.syssize,
            loadflags=raw.loadflags,
            xloadflags=raw.xloadflags if version >= 0x020C else 0,
            code32_start=raw.code32_start,
            initrd_addr_max=raw.initrd_addr_max or DEFAULT_INITRD_ADDR_MAX,
            kernel_alignment=raw.kernel_alignment or 1,
            relocatable=bool(raw.relocatable_kernel),
            min_alignment=raw.min_alignment if has_2_10 else 0,
            cmdline_size=raw.cmdline_size,
            pref_address=raw.pref_address if has_2_10 and raw.pref_address else DEFAULT_LOAD_ADDRESS,
            init_size=raw.init_size if has_2_10 else 0,
            header_end=min(header_end, 0x290),
        )
        start = self.header.setup_size
        if start >= len(data):
            raise BootError(f"{path}: truncated bzImage: setup is {start} bytes, the file {len(data)}")
        if self.header.syssize and start + self.header.syssize * 16 > len(data):
            raise BootError(
                f"{path}: truncated bzImage: header says {self.header.syssize * 16} bytes of kernel, "
                f"the file has {len(data) - start}"
            )
        self.kernel = self.data[start:]
        if self.header.kernel_alignment & (self.header.kernel_alignment - 1):
            raise BootError(f"{path}: kernel_alignment {self.header.kernel_alignment:#x} is not a power of two")

    @property
    def memory_needed(self):
        """Bytes from the load address the kernel needs until it has relocated itself."""
        return max(self.header.init_size, len(self.kernel))

    @property
    def setup_header_bytes(self):
        """The setup header as found in the image, to be copied into the zero page."""
        return bytes(self.data[bp.SETUP_HEADER_OFFSET : self.header.header_end])


def _align_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def _align_down(value, alignment):
    return value // alignment * alignment


def e820_from_ram(ram):
    """The guest's E820 map for RAM ``(gpa, size)`` ranges, as ``(addr, size, type)``.

    Low memory keeps the PC holes: RAM below the EBDA, the EBDA / VGA / BIOS area
    (which holds the ACPI tables) reserved up to 1 MiB.  The MMIO hole between
    the RAM ranges is left out: Linux treats the gap as free for PCI.
    """
    entries = []
    for gpa, size in sorted(ram):
        end = gpa + size
        if gpa < layout.EBDA_START:
            entries.append((gpa, min(end, layout.EBDA_START) - gpa, bp.E820_TYPE_RAM))
        if gpa < layout.KERNEL_MIN_ADDRESS and end > layout.EBDA_START:
            start = max(gpa, layout.EBDA_START)
            entries.append((start, min(end, layout.KERNEL_MIN_ADDRESS) - start, bp.E820_TYPE_RESERVED))
        if end > layout.KERNEL_MIN_ADDRESS:
            start = max(gpa, layout.KERNEL_MIN_ADDRESS)
            entries.append((start, end - start, bp.E820_TYPE_RAM))
    return entries


def _ram_ranges(e820):
    return [(addr, addr + size) for addr, size, kind in e820 if kind == bp.E820_TYPE_RAM]


def _fits(ranges, start, length):
    return any(lo <= start and start + length <= hi for lo, hi in ranges)


def _place_kernel(image, ram, ram_bytes):
    hdr = image.header
    need = image.memory_needed
    candidates = [hdr.pref_address]
    if hdr.relocatable:
        for alignment in (hdr.kernel_alignment, 1 << hdr.min_alignment if hdr.min_alignment else 0):
            if alignment:
                candidates.append(_align_up(layout.KERNEL_MIN_ADDRESS, alignment))
    for address in candidates:
        if address >= layout.KERNEL_MIN_ADDRESS and address + need <= FOUR_GIB and _fits(ram, address, need):
            return address
    raise BootError(
        f"{image.path}: kernel needs {need >> 20} MiB at {hdr.pref_address:#x}"
        f"{' (relocatable)' if hdr.relocatable else ''}; it does not fit in {ram_bytes >> 20} MiB of guest memory"
    )


def _place_initrd(image, size, ram, kernel_start, kernel_end):
    """Highest page-aligned spot in RAM below initrd_addr_max that misses the kernel."""
    top = min(image.header.initrd_addr_max + 1, FOUR_GIB)
    free = []
    for lo, hi in ram:
        lo, hi = max(lo, layout.KERNEL_MIN_ADDRESS), min(hi, top)
        for a, b in ((lo, min(hi, kernel_start)), (max(lo, kernel_end), hi)):
            if b > a:
                free.append((a, b))
    for lo, hi in sorted(free, key=lambda r: r[1], reverse=True):
        address = _align_down(hi - size, PAGE_SIZE)
        if address >= lo:
            return address
    raise BootError(
        f"initrd of {size / (1 << 20):.1f} MiB does not fit in guest memory below {top:#x} beside the kernel "
        f"({kernel_start:#x}-{kernel_end:#x})"
    )


def _page_tables():
    """PML4 -> PDPT -> 4 PDs of 2 MiB pages identity-mapping [0, 4 GiB)."""
    pml4 = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", pml4, 0, PDPT_GPA | _PTE_FLAGS)
    pdpt = bytearray(PAGE_SIZE)
    for i in range(4):
        struct.pack_into("<Q", pdpt, 8 * i, (PD_GPA + i * PAGE_SIZE) | _PTE_FLAGS)
    pds = bytearray(4 * PAGE_SIZE)
    for i in range(4 * 512):
        struct.pack_into("<Q", pds, 8 * i, (i << 21) | _PTE_FLAGS | PTE_PS)
    return bytes(pml4 + pdpt + pds)


def _gdt(long_mode):
    code = GDT_CODE_64 if long_mode else GDT_CODE_32
    return struct.pack("<4Q", 0, 0, code, GDT_DATA)


def _read(source, what):
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        raise BootError(f"{source}: cannot read the {what}: {e.strerror}") from e


def load_bzimage(memory, kernel, *, cmdline=b"", initrd=None, rsdp=0, e820=None, path=None):
    """Load the bzImage ``kernel`` (bytes, a :class:`BzImage` or a path) into ``memory``.

    ``initrd`` is bytes or a path; ``rsdp`` the ACPI RSDP address for
    ``boot_params.acpi_rsdp_addr`` (0: let Linux scan for it); ``e820`` the
    guest memory map as ``(addr, size, type)`` (default: :func:`e820_from_ram`
    of ``memory``'s regions).  Returns the :class:`BootPlan` of the boot vCPU.
    """
    if isinstance(kernel, BzImage):
        image = kernel
    else:
        name = path or (os.fspath(kernel) if isinstance(kernel, (str, os.PathLike)) else "kernel")
        image = BzImage(_read(kernel, "kernel"), name)
    hdr = image.header
    if e820 is None:
        e820 = e820_from_ram((r.gpa, r.size) for r in memory.regions)
    if len(e820) > bp.E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"{len(e820)} E820 entries; the zero page holds {bp.E820_MAX_ENTRIES_ZEROPAGE}")
    ram = _ram_ranges(e820)

    if isinstance(cmdline, str):
        cmdline = cmdline.encode()
    limit = min(hdr.cmdline_size, layout.BOOT_CMDLINE_MAX - 1)
    if len(cmdline) > limit or b"\0" in cmdline:
        raise BootError(
            f"kernel command line is {len(cmdline)} bytes; this kernel accepts {limit}"
            if b"\0" not in cmdline
            else "kernel command line contains a NUL byte"
        )

    load_address = _place_kernel(image, ram, memory.size)
    kernel_end = load_address + image.memory_needed
    memory.write(load_address, image.kernel)

    initrd_address = initrd_size = 0
    if initrd is not None:
        initrd_data = _read(initrd, "initrd")
        initrd_size = len(initrd_data)
        initrd_address = _place_initrd(image, initrd_size, ram, load_address, kernel_end)
        memory.write(initrd_address, initrd_data)

    memory.write(layout.BOOT_CMDLINE, cmdline + b"\0")

    params = bp.new_boot_params()
    header_bytes = image.setup_header_bytes
    bp.ffi.memmove(
        bp.ffi.cast("uint8_t *", params) + bp.SETUP_HEADER_OFFSET, header_bytes, len(header_bytes)
    )
    h = params.hdr
    h.setup_sects = hdr.setup_sects
    h.vid_mode = 0xFFFF  # "normal"
    h.type_of_loader = bp.TYPE_OF_LOADER_UNDEFINED
    h.loadflags = (h.loadflags | bp.LOADED_HIGH | bp.CAN_USE_HEAP) & ~(bp.KEEP_SEGMENTS | bp.QUIET_FLAG)
    h.heap_end_ptr = HEAP_END_PTR
    h.ext_loader_ver = 0
    h.ext_loader_type = 0
    h.code32_start = load_address
    h.cmd_line_ptr = layout.BOOT_CMDLINE
    h.ramdisk_image = initrd_address
    h.ramdisk_size = initrd_size
    h.hardware_subarch = 0  # X86_SUBARCH_PC
    h.hardware_subarch_data = 0
    h.setup_data = 0
    params.acpi_rsdp_addr = rsdp
    params.e820_entries = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        params.e820_table[i].addr = addr
        params.e820_table[i].size = size
        params.e820_table[i].type = kind
    memory.write(layout.BOOT_INFO, bp.to_bytes(params))

    long_mode = hdr.has_64bit_entry
    memory.write(layout.BOOT_GDT, _gdt(long_mode))
    if long_mode:
        memory.write(PML4_GPA, _page_tables())
    return BootPlan(
        mode=CpuMode.LONG_64 if long_mode else CpuMode.PROTECTED_32,
        entry=load_address + ENTRY_64_OFFSET if long_mode else load_address,
        registers={"rsi": layout.BOOT_INFO},
        cr3=PML4_GPA if long_mode else 0,
        gdt=layout.BOOT_GDT,
        gdt_limit=8 * GDT_ENTRIES - 1,
        code_selector=BOOT_CS,
        data_selector=BOOT_DS,
        kernel_end=kernel_end,
    )


# The name the machine uses next to load_pvh.
load_linux = load_bzimage

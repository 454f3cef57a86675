"""Guest memory: host mappings of guest-physical RAM, bounds-checked.

A :class:`GuestMemory` is a list of non-overlapping :class:`MemoryRegion`s,
each a shared mapping of a memfd (so that the same RAM can later be handed to
another process or saved without copying).  Every access is checked: a range
that is not wholly inside one region raises :class:`~xvm.errors.GuestMemoryError`
and touches nothing.  This module needs no /dev/kvm.
"""
import bisect
import gc
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field

from ..errors import ConfigError, GuestMemoryError
from .ffi import ffi

PAGE_SIZE = 4096
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(eq=False)
class MemoryRegion:
    """``size`` bytes of guest RAM at guest-physical ``gpa``."""

    gpa: int
    size: int
    fd: int = -1
    mapping: mmap.mmap = field(default=None, repr=False)

    @classmethod
    def create(cls, gpa, size, name="xvm-ram"):
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise ConfigError(f"memory region {gpa:#x}+{size:#x} is not page aligned")
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        return cls(gpa, size, fd, mapping)

    @property
    def end(self):
        return self.gpa + self.size

    @property
    def host_address(self):
        """Host virtual address of the region's first byte (for KVM and C code)."""
        return int(ffi.cast("uintptr_t", ffi.from_buffer(self.mapping)))

    def data_extents(self):
        """``(start, end)`` offsets, page aligned, of the parts that may hold data: a
        memfd's allocated extents (the rest are holes, which read as zero), else all of it."""
        if self.fd < 0:
            return [(0, self.size)]
        extents, offset = [], 0
        while offset < self.size:
            try:
                start = os.lseek(self.fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
            extents.append((start - start % PAGE_SIZE, -(-end // PAGE_SIZE) * PAGE_SIZE))
            offset = end
        return extents

    def close(self):
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                # A view is still exported. If only garbage (a reference cycle) holds it,
                # collecting frees it and the mapping (with its fd) goes now; otherwise
                # the mapping dies with the last view.
                gc.collect()
                try:
                    self.mapping.close()
                except BufferError:
                    pass
            self.mapping = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DevicePages:
    """Guest page numbers written by device emulation since the last :meth:`take`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pages = set()

    def add(self, gpa, length):
        with self._lock:
            self._pages.update(range(gpa // PAGE_SIZE, (gpa + length - 1) // PAGE_SIZE + 1))

    def take(self):
        """The page numbers recorded since the last call (and forget them)."""
        with self._lock:
            pages, self._pages = self._pages, set()
        return pages


class GuestMemory:
    """Guest-physical RAM made of regions; all accessors are bounds-checked."""

    def __init__(self, regions=()):
        self._regions = []
        self._starts = []
        # Pages the VMM's devices wrote (not in KVM's dirty log), tracked only while a live
        # migration runs: None otherwise, so that devices pay one attribute read.
        self.device_dirty = None
        for region in regions:
            self.add(region)

    # -- device writes, for live migration -------------------------------------------
    def track_device_writes(self, on):
        """Start (``on``) or stop recording the pages devices write (:meth:`device_wrote`)."""
        self.device_dirty = DevicePages() if on else None

    def device_wrote(self, gpa, length):
        """A device wrote ``[gpa, gpa+length)`` (a no-op unless tracking)."""
        pages = self.device_dirty
        if pages is not None and length > 0:
            pages.add(gpa, length)

    @classmethod
    def create(cls, layout):
        """Allocate RAM for ``layout``, an iterable of ``(gpa, size)`` pairs."""
        memory = cls()
        try:
            for gpa, size in layout:
                region = MemoryRegion.create(gpa, size)
                try:
                    memory.add(region)
                except BaseException:
                    region.close()
                    raise
        except BaseException:
            memory.close()
            raise
        return memory

    @classmethod
    def map_file(cls, fd, layout):
        """RAM mapped ``MAP_PRIVATE`` from the file ``fd``: ``layout`` is ``(gpa, size,
        file offset)`` triples (offsets page aligned).  Nothing is read now: each page
        is faulted in from the file when first touched, and writes stay private to
        this mapping.  The file must not change while the memory is in use."""
        memory = cls()
        try:
            for gpa, size, offset in layout:
                if gpa % PAGE_SIZE or size % PAGE_SIZE or offset % PAGE_SIZE or size <= 0:
                    raise ConfigError(f"memory region {gpa:#x}+{size:#x} at file offset {offset:#x} "
                                      "is not page aligned")
                mapping = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE,
                                    offset=offset)
                memory.add(MemoryRegion(gpa, size, -1, mapping))
        except BaseException:
            memory.close()
            raise
        return memory

    def add(self, region):
        i = bisect.bisect(self._starts, region.gpa)
        if (i > 0 and self._regions[i - 1].end > region.gpa) or (
            i < len(self._regions) and region.end > self._regions[i].gpa
        ):
            raise ConfigError(f"memory region {region.gpa:#x}+{region.size:#x} overlaps another")
        self._regions.insert(i, region)
        self._starts.insert(i, region.gpa)

    @property
    def regions(self):
        return tuple(self._regions)

    @property
    def size(self):
        return sum(r.size for r in self._regions)

    def region_of(self, gpa, length=1):
        """The region holding all of ``[gpa, gpa+length)``; raises if none does."""
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and length >= 0:
            region = self._regions[i]
            if gpa + length <= region.end:
                return region
        raise GuestMemoryError(gpa, length)

    def contains(self, gpa, length=1):
        try:
            self.region_of(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, gpa, length):
        """A writable memoryview of ``[gpa, gpa+length)`` (zero copies)."""
        region = self.region_of(gpa, length)
        offset = gpa - region.gpa
        return memoryview(region.mapping)[offset : offset + length]

    def host_address(self, gpa, length=1):
        """Host virtual address of ``gpa``, after checking ``length`` bytes fit."""
        region = self.region_of(gpa, length)
        return region.host_address + (gpa - region.gpa)

    def read(self, gpa, length):
        region = self.region_of(gpa, length)
        offset = gpa - region.gpa
        return region.mapping[offset : offset + length]

    def write(self, gpa, data):
        region = self.region_of(gpa, len(data))
        offset = gpa - region.gpa
        region.mapping[offset : offset + len(data)] = data

    def fill(self, gpa, length, byte=0):
        self.write(gpa, bytes([byte]) * length)

    def _unpack(self, fmt, gpa):
        region = self.region_of(gpa, fmt.size)
        return fmt.unpack_from(region.mapping, gpa - region.gpa)[0]

    def _pack(self, fmt, gpa, value):
        region = self.region_of(gpa, fmt.size)
        fmt.pack_into(region.mapping, gpa - region.gpa, value)

    def read_u16(self, gpa):
        return self._unpack(_U16, gpa)

    def read_u32(self, gpa):
        return self._unpack(_U32, gpa)

    def read_u64(self, gpa):
        return self._unpack(_U64, gpa)

    def write_u16(self, gpa, value):
        self._pack(_U16, gpa, value)

    def write_u32(self, gpa, value):
        self._pack(_U32, gpa, value)

    def write_u64(self, gpa, value):
        self._pack(_U64, gpa, value)

    def close(self):
        for region in self._regions:
            region.close()
        self._regions.clear()
        self._starts.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

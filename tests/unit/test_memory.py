"""GuestMemory: every guest-physical access is bounds-checked and lands in a shared memfd mapping."""
import errno
import os

import pytest

from xvm.errors import ConfigError, GuestMemoryError
from xvm.kvm.ffi import ffi
from xvm.kvm.memory import PAGE_SIZE, GuestMemory, MemoryRegion

LOW = (0, 2 * PAGE_SIZE)  # [0x0, 0x2000)
HIGH = (0x10000, PAGE_SIZE)  # [0x10000, 0x11000), with a hole below it


@pytest.fixture
def mem():
    memory = GuestMemory.create([LOW, HIGH])
    yield memory
    memory.close()


def test_regions_sorted_with_sizes(mem):
    assert [(r.gpa, r.size) for r in mem.regions] == [LOW, HIGH]
    assert mem.size == 3 * PAGE_SIZE


def test_first_and_last_byte_of_each_region_are_accessible(mem):
    for gpa, size in (LOW, HIGH):
        mem.write(gpa, b"\x11")
        mem.write(gpa + size - 1, b"\x22")
        assert mem.read(gpa, 1) == b"\x11"
        assert mem.read(gpa + size - 1, 1) == b"\x22"
        assert mem.contains(gpa) and mem.contains(gpa + size - 1)


@pytest.mark.parametrize(
    "gpa,length",
    [
        (2 * PAGE_SIZE, 1),  # one past the end of the low region
        (2 * PAGE_SIZE - 1, 2),  # last byte plus one past
        (0x10000 - 1, 1),  # just below the high region
        (0x10000 - 1, 2),  # crossing from the hole into the high region
        (0x11000, 1),  # one past the end of RAM
        (0x10000 + PAGE_SIZE - 7, 8),  # a u64 sticking out by one byte
        (-1, 1),  # negative address
        (-1, 2),  # negative address reaching into RAM
        (0, -1),  # negative length
        (0x5000, 0),  # zero length, but in the hole
        (0, 3 * PAGE_SIZE),  # longer than the region
    ],
)
def test_out_of_bounds_ranges_raise(mem, gpa, length):
    assert not mem.contains(gpa, length)
    with pytest.raises(GuestMemoryError) as info:
        mem.read(gpa, length)
    assert info.value.gpa == gpa and info.value.length == length
    with pytest.raises(GuestMemoryError):
        mem.view(gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.host_address(gpa, length)


def test_error_is_an_index_error_naming_the_range(mem):
    with pytest.raises(IndexError, match=r"0x2000\+0x4 is not in guest RAM"):
        mem.read(0x2000, 4)


def test_zero_length_inside_ram_is_empty(mem):
    assert mem.read(0x1000, 0) == b""
    assert mem.contains(0x1000, 0)


def test_access_crossing_two_adjacent_regions_is_rejected():
    # Both bytes are RAM, but they are different mappings: one access must not span them.
    with GuestMemory.create([(0, PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)]) as memory:
        assert memory.contains(PAGE_SIZE - 1) and memory.contains(PAGE_SIZE)
        with pytest.raises(GuestMemoryError):
            memory.read(PAGE_SIZE - 1, 2)
        with pytest.raises(GuestMemoryError):
            memory.write_u32(PAGE_SIZE - 2, 0xFFFFFFFF)
        assert memory.read(PAGE_SIZE - 2, 2) == b"\0\0"
        assert memory.read(PAGE_SIZE, 2) == b"\0\0"


def test_rejected_write_touches_nothing(mem):
    with pytest.raises(GuestMemoryError):
        mem.write(2 * PAGE_SIZE - 2, b"abcd")
    assert mem.read(2 * PAGE_SIZE - 2, 2) == b"\0\0"
    with pytest.raises(GuestMemoryError):
        mem.write_u64(0x11000 - 4, 0x1122334455667788)
    assert mem.read(0x11000 - 4, 4) == bytes(4)


def test_write_read_in_high_region_uses_its_own_offsets(mem):
    mem.write(0x10010, b"high")
    assert mem.read(0x10010, 4) == b"high"
    assert mem.read(0x10, 4) == bytes(4)  # not aliased onto the low region


@pytest.mark.parametrize(
    "width,value,encoded",
    [
        (16, 0xBEEF, b"\xef\xbe"),
        (32, 0xDEADBEEF, b"\xef\xbe\xad\xde"),
        (64, 0x0123456789ABCDEF, b"\xef\xcd\xab\x89\x67\x45\x23\x01"),
    ],
)
def test_integers_round_trip_little_endian(mem, width, value, encoded):
    at = 2 * PAGE_SIZE - width // 8  # flush against the end of the region
    getattr(mem, f"write_u{width}")(at, value)
    assert mem.read(at, width // 8) == encoded
    assert getattr(mem, f"read_u{width}")(at) == value
    mem.write(at, encoded[::-1])
    assert getattr(mem, f"read_u{width}")(at) == int.from_bytes(encoded, "big")
    with pytest.raises(GuestMemoryError):
        getattr(mem, f"read_u{width}")(at + 1)


def test_fill(mem):
    mem.write(0x100, b"\xff" * 16)
    mem.fill(0x104, 8)
    assert mem.read(0x100, 16) == b"\xff" * 4 + bytes(8) + b"\xff" * 4
    mem.fill(0x10000, 3, 0xAB)
    assert mem.read(0x10000, 4) == b"\xab\xab\xab\x00"
    with pytest.raises(GuestMemoryError):
        mem.fill(0x1FFF, 2)


def test_views_write_through_both_ways(mem):
    view = mem.view(0x1000, 16)
    assert len(view) == 16 and not view.readonly
    view[0:4] = b"abcd"
    assert mem.read(0x1000, 4) == b"abcd"
    mem.write_u32(0x1004, 0x64636261)
    assert bytes(view[4:8]) == b"abcd"
    view.release()


def test_host_address_points_at_the_guest_bytes(mem):
    mem.write(0x10123, b"xyz")
    address = mem.host_address(0x10123, 3)
    assert ffi.buffer(ffi.cast("char *", address), 3)[:] == b"xyz"
    ffi.memmove(ffi.cast("char *", address), b"KVM", 3)  # what KVM writing guest RAM looks like
    assert mem.read(0x10123, 3) == b"KVM"
    assert mem.host_address(0x10000) == mem.regions[1].host_address


def test_regions_are_shared_memfd_mappings(mem):
    for region in mem.regions:
        assert os.readlink(f"/proc/self/fd/{region.fd}").startswith("/memfd:xvm-ram")
        assert os.fstat(region.fd).st_size == region.size
    mem.write(0x10008, b"shared")
    # The bytes are in the memfd itself, so another process (or a snapshot) can see them.
    assert os.pread(mem.regions[1].fd, 6, 8) == b"shared"
    os.pwrite(mem.regions[0].fd, b"back", 0x20)
    assert mem.read(0x20, 4) == b"back"


def test_new_ram_is_zeroed(mem):
    assert mem.read(0, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)


@pytest.mark.parametrize("gpa,size", [(0x800, PAGE_SIZE), (0, 100), (0, 0), (0, -PAGE_SIZE)])
def test_unaligned_or_empty_region_rejected(gpa, size):
    with pytest.raises(ConfigError):
        MemoryRegion.create(gpa, size)


@pytest.mark.parametrize(
    "gpa,size",
    [
        (PAGE_SIZE, PAGE_SIZE),  # inside the low region
        (0x10000 - PAGE_SIZE, 2 * PAGE_SIZE),  # reaching into the high region
        (0xF000 + PAGE_SIZE, PAGE_SIZE),  # exactly on the high region
        (0, 0x20000),  # covering both
    ],
)
def test_overlapping_region_rejected_and_memory_unchanged(mem, gpa, size):
    region = MemoryRegion.create(gpa, size)
    try:
        with pytest.raises(ConfigError, match="overlaps"):
            mem.add(region)
        assert [(r.gpa, r.size) for r in mem.regions] == [LOW, HIGH]
    finally:
        region.close()


def test_adjacent_regions_are_accepted(mem):
    region = MemoryRegion.create(2 * PAGE_SIZE, 0x10000 - 2 * PAGE_SIZE)  # fills the hole exactly
    mem.add(region)
    assert mem.size == 0x11000
    mem.write(2 * PAGE_SIZE, b"hole")
    assert mem.read(2 * PAGE_SIZE, 4) == b"hole"


def test_create_failure_releases_what_was_allocated(monkeypatch):
    opened = []
    real_create = MemoryRegion.create.__func__

    def tracking_create(cls, gpa, size, name="xvm-ram"):
        region = real_create(cls, gpa, size, name)
        opened.append(region)
        return region

    monkeypatch.setattr(MemoryRegion, "create", classmethod(tracking_create))
    try:
        with pytest.raises(ConfigError, match="overlaps"):
            GuestMemory.create([(0, PAGE_SIZE), (0, PAGE_SIZE)])
        assert len(opened) == 2
        assert opened[0].fd == -1 and opened[0].mapping is None  # the region already added was closed
    finally:
        for region in opened:
            region.close()


def test_create_failure_releases_the_rejected_region_too(monkeypatch):
    opened = []
    real_create = MemoryRegion.create.__func__

    def tracking_create(cls, gpa, size, name="xvm-ram"):
        region = real_create(cls, gpa, size, name)
        opened.append(region)
        return region

    monkeypatch.setattr(MemoryRegion, "create", classmethod(tracking_create))
    try:
        with pytest.raises(ConfigError, match="overlaps"):
            GuestMemory.create([(0, PAGE_SIZE), (0, PAGE_SIZE)])
        assert opened[1].fd == -1 and opened[1].mapping is None
    finally:
        for region in opened:
            region.close()


def test_close_releases_fds_and_mappings():
    memory = GuestMemory.create([LOW, HIGH])
    fds = [r.fd for r in memory.regions]
    regions = memory.regions
    memory.close()
    for fd in fds:
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF
    assert all(r.fd == -1 and r.mapping is None for r in regions)
    assert memory.regions == () and memory.size == 0
    with pytest.raises(GuestMemoryError):
        memory.read(0, 1)
    memory.close()  # idempotent


def test_close_with_a_live_view_does_not_raise():
    memory = GuestMemory.create([LOW])
    fd = memory.regions[0].fd
    view = memory.view(0, 4)
    memory.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    view[:] = b"ok!!"  # the mapping lives on while the view does
    view.release()


def test_context_manager_closes():
    with GuestMemory.create([LOW]) as memory:
        fd = memory.regions[0].fd
    with pytest.raises(OSError):
        os.fstat(fd)

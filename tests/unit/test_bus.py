"""Port-I/O / MMIO bus: accesses reach the right device at the right offset; the rest reads as all-ones."""
import pytest

from xvm.errors import ConfigError
from xvm.machine.bus import Bus


class Device:
    """Records accesses; reads return a value derived from offset and size."""

    def __init__(self, tag):
        self.tag = tag
        self.reads = []
        self.writes = []

    def read(self, offset, size):
        self.reads.append((offset, size))
        return (self.tag << 8 | offset) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


@pytest.fixture
def bus():
    b = Bus("port I/O")
    b.com1 = Device(0x10)
    b.pm = Device(0x20)
    b.register(0x3F8, 8, b.com1)
    b.register(0x600, 0x10, b.pm)
    return b


def test_dispatch_passes_offsets_relative_to_base(bus):
    assert bus.read(0x3F8, 1) == 0x00
    assert bus.read(0x3FD, 1) == 0x05
    assert bus.read(0x3FF, 1) == 0x07
    bus.write(0x604, 2, 0x2000)
    assert bus.com1.reads == [(0, 1), (5, 1), (7, 1)]
    assert bus.pm.writes == [(4, 2, 0x2000)]
    assert bus.unclaimed == 0


def test_find(bus):
    assert bus.find(0x3FA) == (bus.com1, 2)
    assert bus.find(0x60F) == (bus.pm, 0xF)
    assert bus.find(0x3F7) == (None, 0)
    assert bus.find(0x400) == (None, 0)
    assert bus.find(0x610) == (None, 0)


@pytest.mark.parametrize("address", [0x3F7, 0x400, 0x5FF, 0x610, 0, 0xFFFF])
@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, (1 << 64) - 1)])
def test_unclaimed_reads_are_all_ones_and_counted(bus, address, size, ones):
    assert bus.read(address, size) == ones
    assert bus.unclaimed == 1
    assert bus.com1.reads == [] and bus.pm.reads == []


def test_unclaimed_writes_are_dropped_and_counted(bus):
    bus.write(0x3F7, 1, 0x41)
    bus.write(0x400, 4, 0)
    assert bus.unclaimed == 2
    assert bus.com1.writes == [] and bus.pm.writes == []


@pytest.mark.parametrize(
    "base,size",
    [
        (0x3F8, 8),  # identical
        (0x3F0, 9),  # tail reaches the first port
        (0x3FF, 1),  # the last port
        (0x3FC, 0x10),  # starts inside
        (0x3F0, 0x300),  # swallows both devices
        (0x5F0, 0x11),  # reaches into the second device
    ],
)
def test_overlapping_registration_rejected(bus, base, size):
    intruder = Device(0x99)
    with pytest.raises(ConfigError, match="overlaps"):
        bus.register(base, size, intruder)
    assert all(bus.find(a)[0] is not intruder for a in range(base, base + size))
    assert bus.read(0x3F8, 1) == 0x00 and bus.read(0x600, 1) == 0x00  # old devices untouched


def test_adjacent_registration_accepted(bus):
    below, above = Device(0x30), Device(0x40)
    bus.register(0x3F0, 8, below)
    bus.register(0x400, 1, above)
    assert bus.find(0x3F7) == (below, 7)
    assert bus.find(0x3F8) == (bus.com1, 0)
    assert bus.find(0x3FF) == (bus.com1, 7)
    assert bus.find(0x400) == (above, 0)


@pytest.mark.parametrize("size", [0, -1])
def test_empty_range_rejected(bus, size):
    with pytest.raises(ConfigError):
        bus.register(0x80, size, Device(0x50))


def test_unregister_frees_the_range(bus):
    bus.unregister(bus.com1)
    assert bus.read(0x3F8, 1) == 0xFF and bus.unclaimed == 1
    assert bus.read(0x600, 1) == 0x00  # others stay
    bus.register(0x3F8, 8, Device(0x60))  # the range can be reused


def test_handle_write_decodes_little_endian_data(bus):
    data = memoryview(bytearray(b"\x00\x20\xaa\xbb\xcc\xdd\xee\xff"))
    bus.handle(0x604, 2, True, data)
    assert bus.pm.writes == [(4, 2, 0x2000)]  # only `size` bytes of the buffer count


def test_handle_read_fills_only_size_bytes(bus):
    data = memoryview(bytearray(b"\x55" * 8))
    bus.handle(0x602, 2, False, data)
    assert bytes(data) == b"\x02\x20" + b"\x55" * 6
    assert bus.pm.reads == [(2, 2)]


def test_handle_unclaimed_read_fills_all_ones(bus):
    data = memoryview(bytearray(8))
    bus.handle(0x70, 4, False, data)
    assert bytes(data) == b"\xff" * 4 + bytes(4)
    assert bus.unclaimed == 1


def test_handle_on_kvm_run_style_buffer():
    # KVM hands the exit data as a slice of the kvm_run page; handle() must write into it in place.
    bus = Bus("MMIO")
    dev = Device(0xAB)
    bus.register(0xD000_0000, 0x1000, dev)
    page = bytearray(64)
    bus.handle(0xD000_0070, 4, False, memoryview(page)[40:48])
    assert page[40:44] == (0xAB70).to_bytes(4, "little") and page[44:] == bytes(20)

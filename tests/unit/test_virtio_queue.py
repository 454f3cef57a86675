"""The split virtqueue against hand-built rings in real guest memory.

Every test runs twice: with the Python reference chain walker and with the C
walker (skipped if it cannot be built here).  Hostile and random rings, and the two
walkers against each other, are fuzz targets: tests/fuzz/test_fuzz_ring.py.
"""
import struct

import pytest

from xvm.devices.virtio import native as native_loader
from xvm.devices.virtio.errors import ChainError, QueueError
from xvm.devices.virtio.queue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    Queue, split_ranges,
)
from xvm.devices.virtio.testing import DriverRing
from xvm.kvm.memory import GuestMemory

RAM = 0x100000  # two adjacent 1 MiB regions, a gap, and a third region
LAYOUT = [(0, RAM), (RAM, RAM), (0x400000, 0x10000)]
RING = 0x1000
DATA = 0x20000
TABLE = 0x30000


NATIVE = False


@pytest.fixture(params=[False, True], ids=["python", "native"], autouse=True)
def walker(request):
    global NATIVE
    if request.param and native_loader.load() is None:
        pytest.skip("the C chain walker cannot be built here")
    NATIVE = request.param
    yield request.param
    NATIVE = False


@pytest.fixture
def memory():
    with GuestMemory.create(LAYOUT) as mem:
        yield mem


def make(memory, size=16, **kw):
    ring = DriverRing(memory, RING, size)
    queue = Queue(memory, size, ring.desc_table, ring.avail_ring, ring.used_ring,
                  native=NATIVE, **kw)
    assert queue.native is NATIVE
    return ring, queue


def test_empty_queue_pops_none(memory):
    _, q = make(memory)
    assert q.pop() is None


def test_simple_chain(memory):
    ring, q = make(memory)
    head = ring.add_chain([(DATA, 16, False), (DATA + 0x100, 512, True), (DATA + 0x400, 1, True)])
    ring.publish(head)
    chain = q.pop()
    assert chain.head == head
    assert chain.readable == ((DATA, 16),)
    assert chain.writable == ((DATA + 0x100, 512), (DATA + 0x400, 1))
    assert chain.readable_len == 16 and chain.writable_len == 513
    assert q.pop() is None
    q.add_used(head, 513)
    assert ring.take_used() == [(head, 513)]


def test_completed_chains_are_recorded_while_device_writes_are_tracked(memory):
    """Live migration: completing a chain records its writable buffers (across a region
    boundary too) and the used ring, not its readable ones; nothing when not tracking."""
    from xvm.devices.virtio.queue import used_ring_size

    ring, q = make(memory)
    head = ring.add_chain([(DATA, 16, False), (RAM - 0x100, 0x1200, True)])
    ring.publish(head)
    q.pop()
    memory.track_device_writes(True)
    q.add_used(head, 0x1200)
    used = set(range(ring.used_ring // 4096, (ring.used_ring + used_ring_size(16) - 1) // 4096 + 1))
    assert memory.device_dirty.take() == {RAM // 4096 - 1, RAM // 4096, RAM // 4096 + 1} | used
    assert memory.device_dirty.take() == set()
    memory.track_device_writes(False)
    head = ring.add_chain([(DATA, 16, True)])
    ring.publish(head)
    q.pop()
    q.add_used(head, 16)
    assert memory.device_dirty is None


def test_views_are_guest_memory(memory):
    ring, q = make(memory)
    memory.write(DATA, b"hello")
    ring.publish(ring.add_chain([(DATA, 5, False), (DATA + 8, 3, True)]))
    chain = q.pop()
    assert bytes(chain.readable_views()[0]) == b"hello"
    chain.writable_views()[0][:] = b"abc"
    assert memory.read(DATA + 8, 3) == b"abc"
    assert chain.read() == b"hello"


def test_buffer_across_adjacent_regions_is_split(memory):
    ring, q = make(memory)
    ring.publish(ring.add_chain([(RAM - 8, 16, True)]))
    assert q.pop().writable == ((RAM - 8, 8), (RAM, 8))


def test_many_chains_wrap_around(memory):
    ring, q = make(memory, size=4)
    for i in range(70000 // 4):  # wraps the 16-bit indexes
        heads = []
        for _ in range(4):
            h = ring.add_chain([(DATA, 8, True)])
            ring.publish(h)
            heads.append(h)
        for h in heads:
            chain = q.pop()
            assert chain.head == h
            q.add_used(h, 8)
        assert q.pop() is None
        assert len(ring.take_used()) == 4
        if i > 3:
            break  # keep the test quick; index wrap is covered below
    ring.avail_idx = q.next_avail = 0xFFFE
    q.next_used = ring.last_used = 0xFFFE
    for _ in range(4):
        h = ring.add_chain([(DATA, 8, True)])
        ring.publish(h)
        assert q.pop().head == h
        q.add_used(h, 1)
    assert q.next_avail == 2 and len(ring.take_used()) == 4


def test_indirect_chain(memory):
    ring, q = make(memory, indirect=True)
    head = ring.add_indirect_chain([(DATA, 16, False), (DATA + 0x200, 512, True),
                                    (DATA + 0x400, 1, True)], TABLE)
    ring.publish(head)
    chain = q.pop()
    assert chain.readable == ((DATA, 16),)
    assert chain.writable == ((DATA + 0x200, 512), (DATA + 0x400, 1))


def test_direct_descriptors_then_indirect(memory):
    # §2.7.5.3.2: zero or more direct descriptors followed by one INDIRECT.
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, DATA + 0x800, 16, 0, 0, table=TABLE)
    ring.write_desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 1)
    ring.write_desc(1, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE)
    ring.publish(0)
    chain = q.pop()
    assert chain.readable == ((DATA, 8), (DATA + 0x800, 16))


def chain_error(q, match):
    with pytest.raises(ChainError, match=match) as info:
        q.pop()
    return info.value


@pytest.mark.parametrize("addr,length", [
    (0x200000 - 4, 16),        # runs off the end of the second region into the gap
    (0x300000, 1),             # in the gap
    (0x400000 + 0xFFF0, 32),   # runs off the last region
    (0xFFFFFFFFFFFFFFF0, 32),  # near 2^64
])
def test_buffer_outside_ram(memory, addr, length):
    ring, q = make(memory)
    ring.publish(ring.add_chain([(addr, length, True)]))
    err = chain_error(q, "not in guest RAM")
    assert err.head == 0
    assert q.pop() is None  # the head was consumed


def test_next_index_out_of_range(memory):
    ring, q = make(memory)
    ring.write_desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 16)
    ring.publish(0)
    chain_error(q, "next index beyond")


def test_loop_is_bounded(memory):
    ring, q = make(memory)
    ring.write_desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 1)
    ring.write_desc(1, DATA, 8, VIRTQ_DESC_F_NEXT, 0)
    ring.publish(0)
    chain_error(q, "longer than Queue Size")


def test_self_loop(memory):
    ring, q = make(memory)
    ring.write_desc(3, DATA, 8, VIRTQ_DESC_F_NEXT, 3)
    ring.publish(3)
    chain_error(q, "longer than Queue Size")


def test_indirect_without_feature(memory):
    ring, q = make(memory, indirect=False)
    ring.publish(ring.add_indirect_chain([(DATA, 8, False)], TABLE))
    chain_error(q, "without VIRTIO_F_INDIRECT_DESC")


def test_nested_indirect(memory):
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, TABLE + 0x100, 16, VIRTQ_DESC_F_INDIRECT, table=TABLE)
    ring.write_desc(0, TABLE, 16, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    chain_error(q, "nested indirect")


def test_indirect_with_next(memory):
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, DATA, 8, 0, table=TABLE)
    ring.write_desc(0, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    ring.write_desc(1, DATA, 8, 0)
    ring.publish(0)
    chain_error(q, "INDIRECT together with NEXT")


@pytest.mark.parametrize("length", [0, 8, 17, 33])
def test_indirect_table_bad_length(memory, length):
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, TABLE, length, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    chain_error(q, "multiple of 16")


def test_indirect_table_outside_ram(memory):
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, 0x300000, 64, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    chain_error(q, "indirect table is not in guest RAM")


def test_indirect_next_out_of_table(memory):
    ring, q = make(memory, indirect=True)
    ring.write_desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 2, table=TABLE)
    ring.write_desc(1, DATA, 8, 0, table=TABLE)
    ring.write_desc(0, TABLE, 32, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    chain_error(q, "next index beyond")


def test_indirect_loop_counted_afresh(memory):
    ring, q = make(memory, size=4, indirect=True)
    # A loop inside an 8-entry table is cut after Queue Size (4) descriptors.
    for i in range(8):
        ring.write_desc(i, DATA, 8, VIRTQ_DESC_F_NEXT, (i + 1) % 8, table=TABLE)
    ring.write_desc(0, TABLE, 128, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    chain_error(q, "longer than Queue Size")
    # ...while a 4-descriptor indirect chain behind 3 direct ones is fine (counted afresh).
    for i in range(4):
        ring.write_desc(i, DATA, 8, VIRTQ_DESC_F_NEXT if i < 3 else 0, i + 1, table=TABLE)
    for i in range(3):
        ring.write_desc(i, DATA, 8, VIRTQ_DESC_F_NEXT, i + 1)
    ring.write_desc(3, TABLE, 64, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)
    assert len(q.pop().readable) == 7


def test_total_length_over_4g(memory):
    # 2049 in-RAM buffers of 2 MiB each (spanning the two adjacent regions): 2^32 + 2 MiB.
    ring, q = make(memory, size=4096)
    for i in range(2049):
        ring.write_desc(i, 0, 2 * RAM, VIRTQ_DESC_F_NEXT if i < 2048 else 0, i + 1)
    ring.publish(0)
    chain_error(q, "2\\^32")


def test_readable_after_writable(memory):
    ring, q = make(memory)
    ring.publish(ring.add_chain([(DATA, 8, True), (DATA + 8, 8, False)]))
    chain_error(q, "readable descriptor after a device-writable")


def test_head_out_of_range(memory):
    ring, q = make(memory)
    ring.publish(16)
    err = chain_error(q, "head index")
    assert err.head is None


def test_avail_idx_too_far_ahead(memory):
    ring, q = make(memory)
    memory.write_u16(ring.avail_ring + 2, 17)
    with pytest.raises(QueueError, match="more than Queue Size"):
        q.pop()


@pytest.mark.parametrize("size,desc,avail,used,match", [
    (0, RING, RING + 0x100, RING + 0x1000, "power of 2"),
    (3, RING, RING + 0x100, RING + 0x1000, "power of 2"),
    (65536, RING, RING + 0x100, RING + 0x1000, "power of 2"),
    (16, RING + 8, RING + 0x200, RING + 0x1000, "16-byte aligned"),
    (16, RING, RING + 0x101, RING + 0x1000, "2-byte aligned"),
    (16, RING, RING + 0x100, RING + 0x1002, "4-byte aligned"),
    (16, 0x300000, RING + 0x100, RING + 0x1000, "not in guest RAM"),
    (16, RING, RING + 0x100, 0x40FFF0, "not in guest RAM"),
])
def test_bad_geometry(memory, size, desc, avail, used, match):
    with pytest.raises(QueueError, match=match):
        Queue(memory, size, desc, avail, used, native=NATIVE)


def test_notification_without_event_idx(memory):
    ring, q = make(memory)
    ring.publish(ring.add_chain([(DATA, 8, True)]))
    q.add_used(q.pop().head, 0)
    assert q.needs_notification()
    ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    ring.publish(ring.add_chain([(DATA, 8, True)]))
    q.add_used(q.pop().head, 0)
    assert not q.needs_notification()


def test_event_idx(memory):
    ring, q = make(memory, event_idx=True)
    # avail_event follows our progress (§2.7.10).
    ring.publish(ring.add_chain([(DATA, 8, True)]))
    q.add_used(q.pop().head, 0)
    assert ring.avail_event() == 1
    assert q.needs_notification()  # first time: always
    # The driver wants an interrupt only after used idx passes 3.
    ring.set_used_event(3)
    for expect in (False, False, True, False):
        ring.publish(ring.add_chain([(DATA, 8, True)]))
        q.add_used(q.pop().head, 0)
        assert q.needs_notification() is expect, q.next_used
    # A batch that jumps over used_event still notifies once.
    ring.set_used_event(6)
    for _ in range(3):
        ring.publish(ring.add_chain([(DATA, 8, True)]))
        q.add_used(q.pop().head, 0)
    assert q.needs_notification()


def test_enable_notification_sees_late_buffers(memory):
    ring, q = make(memory, event_idx=True)
    assert not q.enable_notification()
    ring.publish(ring.add_chain([(DATA, 8, True)]))
    assert q.enable_notification()


def test_save_restore(memory):
    ring, q = make(memory, event_idx=True, indirect=True)
    ring.publish(ring.add_chain([(DATA, 8, True)]))
    q.add_used(q.pop().head, 0)
    state = q.save()
    q2 = Queue.restore(memory, state, native=NATIVE)
    assert (q2.next_avail, q2.next_used, q2.event_idx, q2.indirect) == (1, 1, True, True)
    assert type(state).restore(state.save()) == state


def test_split_ranges():
    ranges = [(100, 10), (200, 5), (300, 20)]
    assert split_ranges(ranges, 8, 10) == [(108, 2), (200, 5), (300, 3)]
    assert split_ranges(ranges, 34, 1) == [(319, 1)]
    with pytest.raises(ValueError):
        split_ranges(ranges, 30, 10)


# -- hostile descriptor tables ----------------------------------------------------------

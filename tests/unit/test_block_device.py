"""virtio-blk end to end: mmio registers, worker thread, real eventfds, a real file."""
import os
import select
import struct

import pytest

from xvm.devices.block import Disk, VirtioBlock
from xvm.devices.block.device import (
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
)
from xvm.devices.block.request import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1, EventFdLine, bit, has_feature,
)
from xvm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from xvm.devices.virtio.testing import MmioDriver
from xvm.kvm.memory import GuestMemory

DISK_SIZE = 4 << 20
RING = 0x10000
HDR = 0x40000
DATA = 0x100000
STATUS = 0x3F000
TABLE = 0x3E000


class BlkDriver:
    """A guest virtio-blk driver in miniature."""

    def __init__(self, memory, mmio, features=None, indirect=False):
        self.memory = memory
        self.mmio = mmio
        self.mmio_driver = MmioDriver(mmio, memory, RING)
        self.features = self.mmio_driver.init(features)
        self.ring = self.mmio_driver.rings[0]
        self.indirect = indirect

    def submit(self, type_, sector=0, out=b"", in_len=0, segments=None):
        memory = self.memory
        memory.write(HDR, struct.pack("<IIQ", type_, 0, sector))
        memory.write(STATUS, b"\xff")
        buffers = [(HDR, 16, False)]
        if segments is not None:
            out = b"".join(struct.pack("<QII", *s) for s in segments)
        if out:
            memory.write(DATA, out)
            buffers.append((DATA, len(out), False))
        if in_len:
            memory.fill(DATA, in_len, 0xEE)
            buffers.append((DATA, in_len, True))
        buffers.append((STATUS, 1, True))
        if self.indirect:
            head = self.ring.add_indirect_chain(buffers, TABLE)
        else:
            head = self.ring.add_chain(buffers)
        self.ring.publish(head)
        return head

    def complete(self, head):
        self.mmio_driver.kick(0)
        (used_head, used_len), = self.ring.wait_used()
        assert used_head == head
        return used_len

    def request(self, type_, sector=0, out=b"", in_len=0, segments=None):
        head = self.submit(type_, sector, out, in_len, segments)
        used_len = self.complete(head)
        status = self.memory.read(STATUS, 1)[0]
        return status, self.memory.read(DATA, in_len), used_len


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(DISK_SIZE)
    return path


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 0x400000)]) as mem:
        yield mem


@pytest.fixture
def irq():
    line = EventFdLine()
    yield line
    line.close()


def make(memory, irq, disk, **kw):
    dev = VirtioBlock(disk)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    return dev, mmio, BlkDriver(memory, mmio, **kw)


@pytest.fixture
def blk(image, memory, irq):
    dev, mmio, drv = make(memory, irq, Disk(image, serial="xvm-serial-0001"))
    yield dev, mmio, drv
    mmio.close()
    dev.close()


def test_config_space(blk):
    dev, mmio, drv = blk
    capacity = mmio.read(M.VIRTIO_MMIO_CONFIG, 4) | mmio.read(M.VIRTIO_MMIO_CONFIG + 4, 4) << 32
    assert capacity == DISK_SIZE // 512
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 12, 4) == 254  # seg_max
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 20, 4) == 512  # blk_size
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 34, 2) == 1    # num_queues
    f = drv.features
    assert has_feature(f, VIRTIO_BLK_F_FLUSH) and has_feature(f, VIRTIO_F_VERSION_1)
    assert has_feature(f, VIRTIO_BLK_F_DISCARD) and has_feature(f, VIRTIO_BLK_F_WRITE_ZEROES)
    assert not has_feature(f, VIRTIO_BLK_F_RO)


@pytest.mark.parametrize("indirect", [False, True])
def test_write_read_back(image, memory, irq, indirect):
    dev, mmio, drv = make(memory, irq, Disk(image), indirect=indirect)
    try:
        payload = os.urandom(4096)
        status, _, used = drv.request(VIRTIO_BLK_T_OUT, 8, out=payload)
        assert (status, used) == (VIRTIO_BLK_S_OK, 1)
        with open(image, "rb") as f:
            f.seek(8 * 512)
            assert f.read(4096) == payload
        status, data, used = drv.request(VIRTIO_BLK_T_IN, 8, in_len=4096)
        assert (status, data, used) == (VIRTIO_BLK_S_OK, payload, 4097)
        assert dev.metrics.write_count == 1 and dev.metrics.read_count == 1
        assert dev.metrics.read_bytes == dev.metrics.write_bytes == 4096
        # The used-buffer interrupt left through the irq eventfd.
        assert irq.read() >= 1
    finally:
        mmio.close()
        dev.close()


def test_scattered_buffers(blk, memory, image):
    dev, mmio, drv = blk
    ring = drv.ring
    payload = os.urandom(1024)
    memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 3))
    memory.write(DATA, payload[:100])
    memory.write(DATA + 0x10000, payload[100:])
    head = ring.add_chain([(HDR, 16, False), (DATA, 100, False), (DATA + 0x10000, 924, False),
                           (STATUS, 1, True)])
    ring.publish(head)
    assert drv.complete(head) == 1
    assert memory.read(STATUS, 1) == b"\x00"
    status, data, _ = drv.request(VIRTIO_BLK_T_IN, 3, in_len=1024)
    assert data == payload


def test_flush_calls_fdatasync(blk):
    dev, mmio, drv = blk
    status, _, used = drv.request(VIRTIO_BLK_T_FLUSH)
    assert (status, used) == (VIRTIO_BLK_S_OK, 1)
    assert dev.metrics.flush_count == 1
    assert dev.metrics.fdatasync_count == 1


def test_a_snapshot_flush_syncs_only_what_was_written_since_the_last_sync(blk):
    """The flush before a snapshot or a migration's switchover (device.flush(), the guest
    paused) skips fdatasync when nothing was written since the last one -- an idle guest whose
    last request was a FLUSH costs its switchover no sync -- and syncs after any write."""
    dev, mmio, drv = blk
    syncs = []
    flush = dev.backend.flush
    dev.backend.flush = lambda: syncs.append(1) or flush()
    assert dev.flush() is True and len(syncs) == 1  # never synced here yet
    assert dev.flush() is False and len(syncs) == 1
    assert drv.request(VIRTIO_BLK_T_OUT, 8, out=bytes(512))[0] == VIRTIO_BLK_S_OK
    assert dev.flush() is True and len(syncs) == 2
    assert drv.request(VIRTIO_BLK_T_OUT, 8, out=bytes(512))[0] == VIRTIO_BLK_S_OK
    assert drv.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK  # the guest's own FLUSH
    assert dev.flush() is False and len(syncs) == 3
    assert drv.request(VIRTIO_BLK_T_IN, 8, in_len=512)[0] == VIRTIO_BLK_S_OK  # a read changes nothing
    assert dev.flush() is False and len(syncs) == 3


def test_flush_unsafe_is_noop(image, memory, irq):
    dev, mmio, drv = make(memory, irq, Disk(image, cache="unsafe"))
    try:
        assert drv.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
        assert dev.metrics.flush_count == 1 and dev.metrics.fdatasync_count == 0
    finally:
        mmio.close()
        dev.close()


def test_writethrough(image, memory, irq):
    import fcntl
    dev, mmio, drv = make(memory, irq, Disk(image, cache="writethrough"))
    try:
        assert fcntl.fcntl(dev.backend.fd, fcntl.F_GETFL) & os.O_DSYNC
        assert drv.request(VIRTIO_BLK_T_OUT, 0, out=b"w" * 512)[0] == VIRTIO_BLK_S_OK
    finally:
        mmio.close()
        dev.close()


def test_get_id(blk):
    dev, mmio, drv = blk
    status, data, used = drv.request(VIRTIO_BLK_T_GET_ID, in_len=20)
    assert status == VIRTIO_BLK_S_OK
    assert data == b"xvm-serial-0001" + bytes(5)
    assert used == 21


def test_discard_punches_hole(blk, image):
    dev, mmio, drv = blk
    assert drv.request(VIRTIO_BLK_T_OUT, 0, out=os.urandom(1 << 20))[0] == VIRTIO_BLK_S_OK
    blocks_before = os.stat(image).st_blocks
    status, _, _ = drv.request(VIRTIO_BLK_T_DISCARD, segments=[(0, 2048, 0)])
    assert status == VIRTIO_BLK_S_OK
    assert os.stat(image).st_blocks < blocks_before
    assert os.stat(image).st_size == DISK_SIZE
    assert drv.request(VIRTIO_BLK_T_IN, 0, in_len=4096)[1] == bytes(4096)
    assert dev.metrics.discard_count == 1


def test_discard_with_unmap_flag_unsupported(blk):
    dev, mmio, drv = blk
    status, _, _ = drv.request(VIRTIO_BLK_T_DISCARD, segments=[(0, 8, 1)])
    assert status == VIRTIO_BLK_S_UNSUPP


def test_write_zeroes(blk):
    dev, mmio, drv = blk
    drv.request(VIRTIO_BLK_T_OUT, 16, out=b"\xaa" * 2048)
    for unmap in (0, 1):
        drv.request(VIRTIO_BLK_T_OUT, 16, out=b"\xaa" * 2048)
        status, _, _ = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, segments=[(17, 2, unmap)])
        assert status == VIRTIO_BLK_S_OK
        data = drv.request(VIRTIO_BLK_T_IN, 16, in_len=2048)[1]
        assert data == b"\xaa" * 512 + bytes(1024) + b"\xaa" * 512
    assert dev.metrics.write_zeroes_count == 2


def test_readonly_refuses_writes(image, memory, irq):
    with open(image, "r+b") as f:
        f.write(b"original" * 64)
    dev, mmio, drv = make(memory, irq, Disk(image, readonly=True))
    try:
        assert has_feature(drv.features, VIRTIO_BLK_F_RO)
        assert not has_feature(drv.features, VIRTIO_BLK_F_DISCARD)
        assert not has_feature(drv.features, VIRTIO_BLK_F_WRITE_ZEROES)
        for type_, kw in ((VIRTIO_BLK_T_OUT, {"out": b"x" * 512}),
                          (VIRTIO_BLK_T_DISCARD, {"segments": [(0, 1, 0)]}),
                          (VIRTIO_BLK_T_WRITE_ZEROES, {"segments": [(0, 1, 0)]})):
            assert drv.request(type_, 0, **kw)[0] == VIRTIO_BLK_S_IOERR
        with open(image, "rb") as f:
            assert f.read(512) == b"original" * 64
        status, data, _ = drv.request(VIRTIO_BLK_T_IN, 0, in_len=512)
        assert (status, data) == (VIRTIO_BLK_S_OK, b"original" * 64)
        assert drv.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
    finally:
        mmio.close()
        dev.close()


@pytest.mark.parametrize("type_,sector,kw", [
    (VIRTIO_BLK_T_IN, DISK_SIZE // 512, {"in_len": 512}),
    (VIRTIO_BLK_T_IN, DISK_SIZE // 512 - 1, {"in_len": 1024}),
    (VIRTIO_BLK_T_OUT, 2**64 - 1, {"out": b"z" * 512}),
    (VIRTIO_BLK_T_OUT, 0, {"out": b"z" * 100}),   # not a multiple of 512
    (VIRTIO_BLK_T_DISCARD, 0, {"segments": [(DISK_SIZE // 512 - 1, 2, 0)]}),
])
def test_out_of_range_is_ioerr(blk, type_, sector, kw):
    dev, mmio, drv = blk
    assert drv.request(type_, sector, **kw)[0] == VIRTIO_BLK_S_IOERR
    # ...and the device goes on.
    assert drv.request(VIRTIO_BLK_T_IN, 0, in_len=512)[0] == VIRTIO_BLK_S_OK


def test_unknown_type_unsupp(blk):
    dev, mmio, drv = blk
    assert drv.request(99)[0] == VIRTIO_BLK_S_UNSUPP
    assert drv.request(10)[0] == VIRTIO_BLK_S_UNSUPP  # GET_LIFETIME is not offered


def test_malformed_chains_fail_alone(blk, memory):
    dev, mmio, drv = blk
    ring = drv.ring
    # 1. A buffer outside guest RAM: returned with used length 0.
    head = ring.add_chain([(HDR, 16, False), (0x7FFF0000, 512, True), (STATUS, 1, True)])
    ring.publish(head)
    assert drv.complete(head) == 0
    # 2. No status byte at all.
    memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    head = ring.add_chain([(HDR, 16, False)])
    ring.publish(head)
    assert drv.complete(head) == 0
    # 3. Header too short: IOERR in the status byte.
    memory.write(STATUS, b"\xff")
    head = ring.add_chain([(HDR, 8, False), (STATUS, 1, True)])
    ring.publish(head)
    assert drv.complete(head) == 1
    assert memory.read(STATUS, 1)[0] == VIRTIO_BLK_S_IOERR
    # 4. A descriptor loop.
    ring.write_desc(5, HDR, 16, VIRTQ_DESC_F_NEXT, 6)
    ring.write_desc(6, STATUS, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 5)
    ring.publish(5)
    assert drv.complete(5) == 0
    assert dev.metrics.invalid_chain_count == 2  # 1 and 4; 2 and 3 are invalid requests
    assert dev.metrics.invalid_request_count == 2
    # The device is still healthy.
    assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET
    payload = os.urandom(512)
    assert drv.request(VIRTIO_BLK_T_OUT, 1, out=payload)[0] == VIRTIO_BLK_S_OK
    assert drv.request(VIRTIO_BLK_T_IN, 1, in_len=512)[1] == payload


def test_corrupt_avail_ring_needs_reset(blk, memory, irq):
    dev, mmio, drv = blk
    memory.write_u16(drv.ring.avail_ring + 2, 1000)  # far beyond Queue Size
    drv.mmio_driver.kick(0)
    poller = select.poll()
    poller.register(irq.fileno(), select.POLLIN)
    assert poller.poll(5000)
    import time
    deadline = time.monotonic() + 5
    while not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert dev.metrics.queue_error_count == 1
    # Reset and start again.
    drv2 = BlkDriver(memory, mmio)
    assert drv2.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK


def test_batch_of_requests(blk, memory):
    dev, mmio, drv = blk
    ring = drv.ring
    heads = []
    for i in range(32):
        hdr = HDR + 32 * i
        memory.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, i))
        memory.fill(DATA + 512 * i, 512, i)
        head = ring.add_chain([(hdr, 16, False), (DATA + 512 * i, 512, False),
                               (STATUS + i, 1, True)])
        ring.publish(head)
        heads.append(head)
    drv.mmio_driver.kick(0)
    used = ring.wait_used(32)
    assert sorted(h for h, _ in used) == sorted(heads)
    assert memory.read(STATUS, 32) == bytes(32)
    status, data, _ = drv.request(VIRTIO_BLK_T_IN, 0, in_len=32 * 512)
    assert data == b"".join(bytes([i]) * 512 for i in range(32))


def test_state_survives_save_restore(image, memory, irq):
    dev, mmio, drv = make(memory, irq, Disk(image, serial="s1"))
    drv.request(VIRTIO_BLK_T_OUT, 0, out=b"k" * 512)
    transport_state = mmio.save()
    block_state = dev.save()
    assert type(block_state).restore(block_state.save()) == block_state
    mmio.close()
    dev.close()
    dev2 = VirtioBlock(Disk(image, serial="s1"))  # built from the same config, then restored
    dev2.restore(block_state)
    mmio2 = M.VirtioMmioDevice(dev2, memory, irq)
    try:
        mmio2.restore(transport_state)
        drv.mmio = mmio2
        drv.mmio_driver.mmio = mmio2
        status, data, _ = drv.request(VIRTIO_BLK_T_IN, 0, in_len=512)
        assert (status, data) == (VIRTIO_BLK_S_OK, b"k" * 512)
        assert drv.request(VIRTIO_BLK_T_GET_ID, in_len=20)[1] == b"s1" + bytes(18)
    finally:
        mmio2.close()
        dev2.close()


def test_features_without_discard_negotiated(image, memory, irq):
    features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH)
    dev, mmio, drv = make(memory, irq, Disk(image), features=features)
    try:
        assert drv.request(VIRTIO_BLK_T_DISCARD, segments=[(0, 8, 0)])[0] == VIRTIO_BLK_S_UNSUPP
        assert drv.request(VIRTIO_BLK_T_OUT, 0, out=b"q" * 512)[0] == VIRTIO_BLK_S_OK
    finally:
        mmio.close()
        dev.close()


# -- hostile requests through the whole device (no worker: the core's serve_queue called directly) --

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class _Irq:
    def __init__(self):
        self.count = 0

    def trigger(self, kind, queue=None):
        self.count += 1


_HOSTILE_DESC = st.tuples(
    st.one_of(st.sampled_from([HDR, DATA, STATUS, TABLE, 0x3FFFFF, 0x400000, 2**64 - 8]),
              st.integers(0x20000, 0x500000)),  # never the ring itself (RING..0x13000)
    st.one_of(st.sampled_from([0, 1, 15, 16, 17, 512, 513, 4096]), st.integers(0, 2**32 - 1)),
    st.integers(0, 7),
    st.integers(0, 9),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(descs=st.lists(_HOSTILE_DESC, min_size=8, max_size=8),
       headers=st.lists(st.tuples(st.sampled_from([0, 1, 4, 8, 11, 13, 99]),
                                  st.integers(0, 2**64 - 1) | st.integers(0, 9000)),
                        min_size=1, max_size=3),
       segment=st.binary(min_size=16, max_size=16),
       heads=st.lists(st.integers(0, 7), min_size=1, max_size=8))
def test_hostile_requests_fail_alone(image, descs, headers, segment, heads):
    from xvm.devices.virtio.batch import serve_queue
    from xvm.devices.virtio.queue import Queue
    from xvm.devices.virtio.testing import DriverRing
    # The body is a function of its own: what it makes (queues, a device: they hold views of
    # guest RAM) are gone when the memory closes, so close needs no garbage collection.
    def run(memory):
        dev = VirtioBlock(Disk(image))
        try:
            ring = DriverRing(memory, RING, 8)
            for i, (addr, length, flags, nxt) in enumerate(descs):
                ring.write_desc(i, addr, length, flags, nxt)
            for i, (type_, sector) in enumerate(headers):
                memory.write(HDR + 16 * i, struct.pack("<IIQ", type_, 0, sector))
            memory.write(DATA, segment)
            queue = Queue(memory, 8, ring.desc_table, ring.avail_ring, ring.used_ring,
                          indirect=True, event_idx=True)
            dev.ack_features(dev.device_features)
            dev.activate(memory, [queue], _Irq())
            for head in heads:
                ring.publish(head)
            serve_queue(dev, 0)  # never raises for per-request faults
            used = ring.take_used()
            assert sorted(h for h, _ in used) == sorted(heads)  # every request completed
            assert not dev.broken
            # The device still serves a good request afterwards.
            ring.write_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1)
            ring.write_desc(1, STATUS, 1, VIRTQ_DESC_F_WRITE)
            memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_FLUSH, 0, 0))
            ring.publish(0)
            serve_queue(dev, 0)
            assert ring.take_used() == [(0, 1)]
            assert memory.read(STATUS, 1)[0] == VIRTIO_BLK_S_OK
        finally:
            dev.close()
    with GuestMemory.create([(0, 0x400000)]) as memory:
        run(memory)


def test_resize_sends_config_change(blk, image):
    dev, mmio, drv = blk
    irq_line = mmio.transport.irq
    irq_line.read()
    generation = mmio.read(M.VIRTIO_MMIO_CONFIG_GENERATION, 4)
    os.truncate(image, 2 * DISK_SIZE)
    assert dev.refresh_capacity() == 2 * DISK_SIZE // 512
    assert mmio.read(M.VIRTIO_MMIO_CONFIG, 4) == 2 * DISK_SIZE // 512
    assert mmio.read(M.VIRTIO_MMIO_CONFIG_GENERATION, 4) == generation + 1
    assert drv.mmio_driver.ack_interrupts() & 2  # VIRTIO_MMIO_INT_CONFIG
    assert irq_line.read() >= 1
    # The new sectors are usable.
    last = 2 * DISK_SIZE // 512 - 1
    assert drv.request(VIRTIO_BLK_T_OUT, last, out=b"e" * 512)[0] == VIRTIO_BLK_S_OK
    assert dev.refresh_capacity() == 2 * DISK_SIZE // 512  # unchanged: no interrupt
    os.truncate(image, 2 * DISK_SIZE + 100)
    with pytest.raises(Exception, match="not a multiple of 512"):
        dev.refresh_capacity()


def test_guest_errors_counted_and_rate_limited(blk, memory, caplog):
    """1000 malformed chains: each fails alone and is counted; the host log gets
    a handful of one-line records and a "suppressed" summary, no traceback."""
    import logging
    import re
    dev, mmio, drv = blk
    ring = drv.ring
    caplog.set_level(logging.DEBUG, logger="xvm")
    for _ in range(10):
        heads = []
        for _ in range(100):
            # One device-writable buffer outside guest RAM (§2.7.5).
            head = ring.add_chain([(0x7FFF0000, 512, True)])
            ring.publish(head)
            heads.append(head)
        drv.mmio_driver.kick(0)
        assert sorted(ring.wait_used(100)) == sorted((h, 0) for h in heads)
    assert dev.metrics.guest_error_count == 1000
    assert dev.metrics.invalid_chain_count == 1000
    assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET
    # A corrupt ring: one more guest error, the device needs a reset.
    memory.write_u16(ring.avail_ring + 2, ring.avail_idx + 1000)
    drv.mmio_driver.kick(0)
    import time
    deadline = time.monotonic() + 5
    while not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert dev.metrics.guest_error_count == 1001
    assert dev.metrics.queue_error_count == 1
    mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0)  # a reset logs what was suppressed
    records = [r for r in caplog.records if r.name.startswith("xvm")]
    print(f"\n{len(records)} log records for 1001 guest errors:")
    for r in records:
        print("  ", r.levelname, r.getMessage())
    assert len(records) <= 12
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    logged = [r for r in records if "malformed chain" in r.getMessage()]
    assert logged and all(dev.name in r.getMessage() and "(§2.7.5)" in r.getMessage()
                          for r in logged)
    suppressed = sum(int(m.group(1)) for r in records
                     if (m := re.search(r"(\d+) more suppressed", r.getMessage())))
    ring_errors = [r for r in records if "avail.idx" in r.getMessage()]
    assert len(logged) + len(ring_errors) + suppressed == 1001

"""The C virtio-blk request path (``xvm_blk_request``) against the Python reference.

Both paths serve the same rings, hostile or not, over copies of the same image and
guest RAM; afterwards the used rings, every byte of guest RAM, the images and the
device counters must be identical.  Real files, real guest-memory mappings.
"""
import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xvm.devices.block import Disk, VirtioBlock
from xvm.devices.block.backend.raw import RawFile
from xvm.devices.block.request import (
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
)
from xvm.devices.virtio import native
from xvm.devices.virtio.batch import serve_queue
from xvm.devices.virtio.device import VIRTIO_F_EVENT_IDX
from xvm.devices.virtio.queue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    Queue,
)
from xvm.devices.virtio.testing import DriverRing
from xvm.kvm.memory import GuestMemory

pytestmark = pytest.mark.skipif(native.load() is None, reason="no C compiler: Python only")

MEMORY = 0x200000
RING = 0x1000
HDR = 0x8000
STATUS = 0x9000
DATA = 0x10000
DISK_SIZE = 1 << 20
QUEUE_SIZE = 16


class _Irq:
    def trigger(self, kind, queue=None):
        pass


def _image(path):
    with open(path, "wb") as f:
        f.write(hashlib.sha256(b"blk").digest() * (DISK_SIZE // 32))
    return path


def _run(tmp_path, name, native_path, setup, heads, readonly=False, tune=None, **ring):
    """Serve ``heads`` with the chosen path; returns everything observable.
    ``tune(device)`` may set the C path's I/O pool knobs first; ``ring`` is how the
    driver asks for notifications (:func:`_serve`)."""
    path = _image(tmp_path / f"{name}.img")
    with GuestMemory.create([(0, MEMORY)]) as memory:
        used, ram, counters, broken, state = _serve(memory, path, native_path, setup, heads,
                                                    readonly, tune, **ring)
    with open(path, "rb") as f:
        disk = hashlib.sha256(f.read()).hexdigest()
    return used, ram, disk, counters, broken, state


# A function of its own: the device and queue (which hold views of guest RAM) are gone when
# _run closes the memory, so close needs no garbage collection.
def _serve(memory, path, native_path, setup, heads, readonly, tune, event_idx=True,
           used_events=(), avail_flags=0, split=None):
    """``heads`` published and served in one turn, or two (``heads[:split]``, the rest);
    before turn ``i`` the driver sets used_event to ``used_events[i]`` (if given); its
    avail.flags are ``avail_flags``."""
    memory.fill(0, MEMORY, 0xA5)
    dev = VirtioBlock(Disk(path, readonly=readonly), queue_size=QUEUE_SIZE)
    if tune is not None:
        tune(dev)
    try:
        ring = DriverRing(memory, RING, QUEUE_SIZE)
        setup(memory, ring)
        queue = Queue(memory, QUEUE_SIZE, ring.desc_table, ring.avail_ring, ring.used_ring,
                      indirect=True, event_idx=event_idx, native=native_path)
        assert queue.native is native_path
        features = dev.device_features
        if not event_idx:
            features &= ~(1 << VIRTIO_F_EVENT_IDX)
        dev.ack_features(features)
        dev.activate(memory, [queue], _Irq())
        ring.set_avail_flags(avail_flags)
        turns = [heads] if split is None else [heads[:split], heads[split:]]
        for i, turn in enumerate(turns):
            if i < len(used_events):
                ring.set_used_event(used_events[i])
            for head in turn:
                ring.publish(head)
            serve_queue(dev, 0)
        used = ring.take_used()
        # Requests in flight together may complete in any order (§2.7.8): the used
        # elements are compared as a set, the rest of guest RAM byte for byte.
        elems = ring.used_ring + 4
        ram = bytearray(memory.read(0, MEMORY))
        ram[elems:elems + 8 * QUEUE_SIZE] = bytes(8 * QUEUE_SIZE)
        ram = hashlib.sha256(ram).hexdigest()
        return used, ram, dev.metrics.snapshot(), dev.broken, queue.save()
    finally:
        dev.close()


def _per_request(tune):
    """``tune``, and the C path without whole turns in C: one C call per request."""
    def per_request(dev):
        if tune is not None:
            tune(dev)
        dev.turns_in_c = False
    return per_request


def _both(tmp_path, setup, heads, tune=None, **kw):
    """The C path (whole turns in C, and one C call per request) and the Python reference
    end alike, notifications and the saved queue state included; returns the first's."""
    c = _run(tmp_path, "c", True, setup, heads, tune=tune, **kw)
    per_request = _run(tmp_path, "c1", True, setup, heads, tune=_per_request(tune), **kw)
    py = _run(tmp_path, "py", False, setup, heads, **kw)
    for other in (per_request, py):
        assert sorted(c[0]) == sorted(other[0]) and c[1:] == other[1:]
    return c


def test_read_write_through_c_path(tmp_path):
    """A scattered write then a read of it: served by C (the Python walker is not
    used at all) and byte-identical to the reference."""
    def setup(memory, ring):
        memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 8))
        memory.write(HDR + 16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 8))
        memory.write(DATA, hashlib.sha256(b"data").digest() * 128)
        for i, (a, n, f, nx) in enumerate([
                (HDR, 16, VIRTQ_DESC_F_NEXT, 1), (DATA, 1000, VIRTQ_DESC_F_NEXT, 2),
                (DATA + 1000, 3096, VIRTQ_DESC_F_NEXT, 3), (STATUS, 1, VIRTQ_DESC_F_WRITE, 0),
                (HDR + 16, 16, VIRTQ_DESC_F_NEXT, 5),
                (DATA + 0x10000, 4097, VIRTQ_DESC_F_WRITE, 0)]):  # status is the last byte
            ring.write_desc(i, a, n, f, nx)
    used, *_ = _both(tmp_path, setup, [0, 4])
    assert used == [(0, 1), (4, 4097)]


def test_python_walker_never_runs_on_the_fast_path(tmp_path, monkeypatch):
    def setup(memory, ring):
        memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
        ring.write_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1)
        ring.write_desc(1, DATA, 513, VIRTQ_DESC_F_WRITE, 0)

    def fail(*a):
        raise AssertionError("walked in Python")
    monkeypatch.setattr(Queue, "walk_native", fail)
    used, *_ = _run(tmp_path, "c", True, setup, [0])
    assert used == [(0, 513)]


def test_readonly_write_falls_back_to_ioerr(tmp_path):
    def setup(memory, ring):
        memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 0))
        ring.write_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1)
        ring.write_desc(1, DATA, 512, VIRTQ_DESC_F_NEXT, 2)
        ring.write_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0)
    used, _, _, counters, *_ = _both(tmp_path, setup, [0], readonly=True)
    assert used == [(0, 1)] and counters["io_error_count"] == 1


_ADDR = st.sampled_from([HDR, HDR + 16, HDR + 32, HDR + 8, DATA, DATA + 512, DATA + 0x1000, STATUS,
                         MEMORY - 512, MEMORY - 1, MEMORY, 2**64 - 8])
_DESC = st.tuples(_ADDR,
                  st.sampled_from([0, 1, 8, 16, 17, 512, 513, 1024, 4096, 4097, 2**32 - 1]),
                  st.sampled_from([0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
                                   VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 4, 7]),
                  st.integers(0, QUEUE_SIZE))


_NOTIFY = st.one_of(
    st.fixed_dictionaries({"used_events": st.lists(st.integers(0, 2 * QUEUE_SIZE),
                                                   min_size=2, max_size=2)}),
    st.fixed_dictionaries({"event_idx": st.just(False),
                           "avail_flags": st.sampled_from([0, VIRTQ_AVAIL_F_NO_INTERRUPT])}))


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(descs=st.lists(_DESC, min_size=QUEUE_SIZE, max_size=QUEUE_SIZE),
       headers=st.lists(st.tuples(st.sampled_from([0, 0, 1, 1, 4, 8, 11, 99]),
                                  st.sampled_from([0, 1, 8, 2040, 2047, 2048, 2**64 - 1])),
                        min_size=3, max_size=3),
       heads=st.lists(st.integers(0, QUEUE_SIZE), min_size=1, max_size=QUEUE_SIZE),
       split=st.one_of(st.none(), st.integers(0, QUEUE_SIZE)), notify=_NOTIFY)
@example(descs=[(HDR, 0, 0, 0)] * QUEUE_SIZE, headers=[(0, 0)] * 3, heads=[QUEUE_SIZE, 0],
         split=None, notify={})
def test_c_and_python_paths_agree(tmp_path, descs, headers, heads, split, notify):
    """Hostile or valid, every request ends the same on both paths, over one turn or two,
    with the driver asking for notifications (used_event, NO_INTERRUPT) or not: the used
    ring, guest RAM (avail_event too), the image, the counters (notifications sent too) and
    the queue state a snapshot would save."""
    def setup(memory, ring):
        for i, (a, n, f, nx) in enumerate(descs):
            ring.write_desc(i, a, n, f, nx)
        for i, (type_, sector) in enumerate(headers):
            memory.write(HDR + 16 * i, struct.pack("<IIQ", type_, 0, sector))
        memory.write(DATA, bytes(range(256)) * 32)
    _both(tmp_path, setup, heads, split=split, **notify)


# --- requests of one batch side by side (the C path's I/O pool) ---------------------------------

def _pooled(dev):
    """Every request of a batch to the pool: no non-blocking first try, no size floor."""
    dev.io_threads = 4
    dev.parallel_min_bytes = 0
    dev.nowait = False


def _requests(requests):
    """A setup for ``requests`` (``(type, sector, data_len)``) and their heads.  Request ``i``
    has descriptors 3i.., its own header, data and status buffers (a 64 KiB data slot each),
    so running requests side by side cannot mix their bytes in guest RAM."""
    def setup(memory, ring):
        for i, (type_, sector, length) in enumerate(requests):
            base = DATA + i * 0x10000
            memory.write(HDR + 16 * i, struct.pack("<IIQ", type_, 0, sector))
            memory.write(base, bytes((i * 7 + j) & 0xFF for j in range(256)) * (length // 256))
            descs = [(HDR + 16 * i, 16, 0)]
            if length:
                descs.append((base, length, VIRTQ_DESC_F_WRITE if type_ != VIRTIO_BLK_T_OUT else 0))
            descs.append((STATUS + i, 1, VIRTQ_DESC_F_WRITE))
            for d, (addr, n, flags) in enumerate(descs):
                last = d == len(descs) - 1
                ring.write_desc(3 * i + d, addr, n, flags | (0 if last else VIRTQ_DESC_F_NEXT),
                                0 if last else 3 * i + d + 1)
    return setup, [3 * i for i in range(len(requests))]


@pytest.mark.parametrize("used_event", [0, 1, 2, 3, 4, 5, 6, 0xFFFF])
def test_notifications_follow_used_event(tmp_path, used_event):
    """Three reads in one turn, two in the next with the driver's used_event set: the first
    turn notifies (nothing was notified before), the second iff used_event lies in the
    indexes it used, 3 or 4 (§2.7.7.2: used.idx passed used_event); on every path."""
    setup, heads = _requests([(VIRTIO_BLK_T_IN, 8 * i, 512) for i in range(5)])
    used, _, _, counters, _, state = _both(tmp_path, setup, heads, split=3,
                                            used_events=[0, used_event])
    assert len(used) == 5 and state.next_used == state.signalled_used == 5
    assert counters["interrupt_count"] == 1 + (used_event in (3, 4))


def test_no_interrupt_flag_without_event_idx(tmp_path):
    """Without EVENT_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT set means no notification (§2.7.7.2),
    clear means one per turn."""
    setup, heads = _requests([(VIRTIO_BLK_T_IN, 8 * i, 512) for i in range(4)])
    for flags, interrupts in ((VIRTQ_AVAIL_F_NO_INTERRUPT, 0), (0, 2)):
        counters = _both(tmp_path, setup, heads, split=2, event_idx=False,
                         avail_flags=flags)[3]
        assert counters["interrupt_count"] == interrupts


def test_a_turn_in_c_makes_no_python_call_per_request(tmp_path, monkeypatch):
    """Reads and writes done at once: the whole turn is one C call, none of the per-request
    Python steps (pop, start, used ring) runs, and the result is the reference's."""
    from xvm.devices.block.device import _InFlight
    from xvm.devices.virtio.batch import Batch

    def fail(*a):
        raise AssertionError("a per-request Python step ran")
    setup, heads = _requests([(VIRTIO_BLK_T_OUT, 0, 4096), (VIRTIO_BLK_T_IN, 0, 4096),
                              (VIRTIO_BLK_T_IN, 64, 512), (VIRTIO_BLK_T_OUT, 128, 0x8000)])
    with monkeypatch.context() as m:
        for cls, name in ((_InFlight, "start"), (_InFlight, "reap"), (Queue, "pop_head"),
                          (Queue, "add_used"), (Queue, "needs_notification"), (Batch, "take")):
            m.setattr(cls, name, fail)
        c = _run(tmp_path, "c", True, setup, heads)
    py = _run(tmp_path, "py", False, setup, heads)
    assert c[0] == [(heads[0], 1), (heads[1], 4097), (heads[2], 513), (heads[3], 1)]
    assert c[1:] == py[1:]


def test_a_stop_request_reaches_a_turn_in_c(tmp_path, monkeypatch):
    """The worker asks to stop (its C flag) while a turn is served: the request in hand ends
    on the used ring, nothing more is popped and the turn says work is left; the next turn
    serves the rest."""
    flag = native.load().ffi.new("int *")
    real_execute = VirtioBlock.execute

    def execute(dev, request):
        if request.type == VIRTIO_BLK_T_FLUSH:
            flag[0] = 1  # the stop arrives while the FLUSH is served
        return real_execute(dev, request)
    monkeypatch.setattr(VirtioBlock, "execute", execute)
    setup, heads = _requests([(VIRTIO_BLK_T_IN, 0, 512), (VIRTIO_BLK_T_FLUSH, 0, 0),
                              (VIRTIO_BLK_T_IN, 8, 512), (VIRTIO_BLK_T_IN, 16, 512)])
    with GuestMemory.create([(0, MEMORY)]) as memory:
        _stopped_turn(memory, _image(tmp_path / "s.img"), setup, heads, flag)


def test_a_live_migration_sees_what_the_c_path_writes(tmp_path):
    """While device writes are tracked (a live migration's pre-copy), reads done in C
    record the pages they filled and the used ring's."""
    setup, heads = _requests([(VIRTIO_BLK_T_IN, 0, 0x8000), (VIRTIO_BLK_T_IN, 64, 512)])
    with GuestMemory.create([(0, MEMORY)]) as memory:
        memory.track_device_writes(True)
        _serve(memory, _image(tmp_path / "m.img"), True, setup, heads, False, None)
        pages = memory.device_dirty.take()
    used_ring = RING + 4096  # DriverRing's: the page after the table and available ring
    wanted = {used_ring // 4096, STATUS // 4096, (DATA + 0x10000) // 4096}
    wanted |= set(range(DATA // 4096, (DATA + 0x8000) // 4096))
    assert wanted <= pages


def _stopped_turn(memory, path, setup, heads, flag):
    dev = VirtioBlock(Disk(path), queue_size=QUEUE_SIZE)
    try:
        ring = DriverRing(memory, RING, QUEUE_SIZE)
        setup(memory, ring)
        queue = Queue(memory, QUEUE_SIZE, ring.desc_table, ring.avail_ring, ring.used_ring,
                      indirect=True, event_idx=True, native=True)
        dev.ack_features(dev.device_features)
        dev.activate(memory, [queue], _Irq())
        for head in heads:
            ring.publish(head)
        batch = serve_queue(dev, 0, stop=lambda: flag[0] == 1, stop_flag=flag)
        assert ring.take_used() == [(heads[0], 513), (heads[1], 1)] and batch.more
        assert queue.next_avail == ring.avail_event() == 2 and queue.next_used == 2
        flag[0] = 0
        batch = serve_queue(dev, 0, stop=lambda: flag[0] == 1, stop_flag=flag)
        assert ring.take_used() == [(heads[2], 513), (heads[3], 513)] and not batch.more
    finally:
        dev.close()


def test_batch_requests_run_side_by_side(tmp_path):
    """Four reads made available together are all in flight at once: each waits (2 s at
    most) until four run, so one-after-another service would leave the peak below 4."""
    lib = native.load().lib
    setup, heads = _requests([(VIRTIO_BLK_T_IN, 128 * i, 0x8000) for i in range(4)])
    lib.xvm_blk_pool_peak(1)
    lib.xvm_blk_pool_rendezvous(4, 2000)
    try:
        used, *_ = _both(tmp_path, setup, heads, tune=_pooled)
    finally:
        lib.xvm_blk_pool_rendezvous(0, 0)
    assert lib.xvm_blk_pool_peak(1) == 4
    assert sorted(used) == [(h, 0x8000 + 1) for h in heads]


@pytest.mark.parametrize("second", [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_IN])
def test_a_request_overlapping_a_write_in_flight_waits_for_it(tmp_path, second):
    """A write, then a write or a read of sectors it covers: never in flight together (each
    would wait 200 ms for the other), and the read sees the written bytes."""
    lib = native.load().lib
    setup, heads = _requests([(VIRTIO_BLK_T_OUT, 8, 0x8000), (second, 16, 0x8000)])
    lib.xvm_blk_pool_peak(1)
    lib.xvm_blk_pool_rendezvous(2, 200)
    try:
        used, *_ = _both(tmp_path, setup, heads, tune=_pooled)
    finally:
        lib.xvm_blk_pool_rendezvous(0, 0)
    assert lib.xvm_blk_pool_peak(1) == 1
    assert used == [(heads[0], 1), (heads[1], 0x8001 if second == VIRTIO_BLK_T_IN else 1)]


def test_flush_waits_for_the_writes_before_it(tmp_path, monkeypatch):
    """Writes side by side, then a FLUSH in the same batch: the flush runs only once both
    writes are in the image (virtio 1.2 §5.2.6: it covers the writes completed before it)."""
    seen = []
    real_flush = RawFile.flush

    def flush(backend):
        seen.append(os.pread(backend.fd, 2 * 0x8000, 0))
        return real_flush(backend)
    monkeypatch.setattr(RawFile, "flush", flush)
    setup, heads = _requests([(VIRTIO_BLK_T_OUT, 0, 0x8000), (VIRTIO_BLK_T_OUT, 64, 0x8000),
                              (VIRTIO_BLK_T_FLUSH, 0, 0)])
    used, _, _, counters, *_ = _run(tmp_path, "c", True, setup, heads, tune=_pooled)
    assert sorted(used[:2]) == [(heads[0], 1), (heads[1], 1)] and used[2] == (heads[2], 1)
    assert counters["flush_count"] == 1 and counters["write_count"] == 2
    assert seen == [bytes(j & 0xFF for j in range(256)) * 128
                    + bytes((7 + j) & 0xFF for j in range(256)) * 128]


_IO = st.tuples(st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
                                 VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, 99]),
                st.sampled_from([0, 1, 8, 16, 64, 2040, 2047, 2048]),
                st.sampled_from([0, 512, 4096, 0x8000, 0x10000, 1000]))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ios=st.lists(_IO, min_size=1, max_size=5), threads=st.sampled_from([0, 1, 4]),
       nowait=st.booleans())
def test_side_by_side_ends_as_one_after_another(tmp_path, ios, threads, nowait):
    """Reads and writes of one batch on the I/O pool, overlapping on the disk or not, mixed
    with flushes, other types and requests past the end: the used ring, guest RAM, image and
    counters end as the Python reference's, which serves one request after another."""
    setup, heads = _requests(ios)

    def tune(dev):
        _pooled(dev)
        dev.io_threads = threads
        dev.nowait = nowait
    _both(tmp_path, setup, heads, tune=tune)


def test_guest_faults_leave_nothing_holding_guest_ram(tmp_path, monkeypatch):
    """A malformed chain and a corrupt ring, on both paths: once the device is closed
    nothing (no exception's traceback in a reference cycle) holds views of guest RAM, so
    closing the memory unmaps it at once, without a garbage collection."""
    import xvm.kvm.memory

    def collect(*args):
        raise AssertionError("GuestMemory.close needed a garbage collection")
    monkeypatch.setattr(xvm.kvm.memory.gc, "collect", collect)

    def setup(memory, ring):
        ring.write_desc(0, HDR, 8, VIRTQ_DESC_F_INDIRECT, 0)  # §2.7.5.3: not a table
    for native_path in (True, False):
        used, _, _, _, broken, _ = _run(tmp_path, "x", native_path, setup, [0, QUEUE_SIZE])
        assert used == [(0, 0)] and broken

"""Fuzz targets: the split virtqueue's chain walkers (virtio 1.2 §2.7), Python and C, on
rings a hostile guest writes into real guest memory: structured hostile descriptor tables
(every chain popped must lie inside guest RAM), random bytes as whole rings, and the two
walkers against each other (the same chains and the same errors, head by head and whole
rings popped).  Only ChainError / QueueError may come out.

Seeds: ``corpus/ring/*.json`` (whole rings: ``raw`` = 8 descriptors + the avail ring, hex;
``table`` = an indirect table at 0x30000, hex), replayed by the ring-popping target.
"""
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, replay
from xvm.devices.virtio import native as native_loader
from xvm.devices.virtio.errors import ChainError, QueueError
from xvm.devices.virtio.queue import Queue
from xvm.devices.virtio.testing import DriverRing
from xvm.kvm.memory import GuestMemory

RAM = 0x100000  # two adjacent 1 MiB regions, a gap, and a third region
LAYOUT = [(0, RAM), (RAM, RAM), (0x400000, 0x10000)]
RING = 0x1000
TABLE = 0x30000
WALKERS = [pytest.param(False, id="python"),
           pytest.param(True, id="native", marks=pytest.mark.skipif(native_loader.load() is None,
                                                                   reason="the C chain walker cannot be built here"))]


_ADDRS = st.one_of(
    st.integers(0, 3 * RAM),
    st.integers(0x3F0000, 0x410010),
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, RAM - 1, RAM, 2 * RAM - 16, TABLE, 0x400000, 2**64 - 16]),
)
_LENS = st.one_of(st.integers(0, 0x200), st.sampled_from([0, 16, 32, 2**31, 2**32 - 1, RAM]),
                  st.integers(0, 2**32 - 1))
_FLAGS = st.integers(0, 7) | st.integers(0, 0xFFFF)
_DESCS = st.tuples(_ADDRS, _LENS, _FLAGS, st.integers(0, 0xFFFF) | st.integers(0, 20))


def _check_chain(memory, chain):
    total = 0
    for gpa, length in chain.readable + chain.writable:
        assert length > 0
        assert memory.contains(gpa, length)  # every buffer lies inside guest RAM
        total += length
    assert total <= 2**32


@pytest.mark.timeout(60)
@pytest.mark.parametrize("native", WALKERS)
@settings(FUZZ, max_examples=examples(40))
@given(size_log=st.integers(0, 4), descs=st.lists(_DESCS, min_size=16, max_size=16),
       table=st.lists(_DESCS, min_size=0, max_size=24), heads=st.lists(st.integers(0, 20),
                                                                       min_size=1, max_size=4),
       indirect=st.booleans(), event_idx=st.booleans())
def test_hostile_tables(native, size_log, descs, table, heads, indirect, event_idx):
    """Hostile descriptor tables: every chain popped lies inside guest RAM, under 4 GiB."""
    size = 1 << size_log
    # The body is a function of its own: what it makes (queues, a device: they hold views of
    # guest RAM) are gone when the memory closes, so close needs no garbage collection.
    def run(memory):
        ring = DriverRing(memory, RING, size)
        q = Queue(memory, size, ring.desc_table, ring.avail_ring, ring.used_ring,
                  indirect=indirect, event_idx=event_idx, native=native)
        for i in range(size):
            addr, length, flags, nxt = descs[i]
            ring.write_desc(i, addr, length, flags, nxt)
        for i, (addr, length, flags, nxt) in enumerate(table):
            memory.write(TABLE + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
        published = heads[:size]
        for head in published:
            ring.publish(head)
        for _ in published:
            try:
                chain = q.pop()
            except ChainError:
                continue
            assert chain is not None
            _check_chain(memory, chain)
        assert q.pop() is None
    with GuestMemory.create(LAYOUT) as memory:
        run(memory)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("native", WALKERS)
@settings(FUZZ, max_examples=examples(60))
@given(raw=st.binary(min_size=16 * 8 + 6 + 2 * 8, max_size=16 * 8 + 6 + 2 * 8),
       table=st.binary(min_size=0, max_size=256))
def test_random_bytes_as_rings(native, raw, table):
    """Arbitrary bytes as descriptor table and avail ring: only QueueError/ChainError."""
    size = 8
    # The body is a function of its own: what it makes (queues, a device: they hold views of
    # guest RAM) are gone when the memory closes, so close needs no garbage collection.
    def run(memory):
        ring = DriverRing(memory, RING, size)
        memory.write(ring.desc_table, raw[:16 * size])
        memory.write(ring.avail_ring, raw[16 * size:])
        memory.write(TABLE, table)
        q = Queue(memory, size, ring.desc_table, ring.avail_ring, ring.used_ring,
                  indirect=True, native=native)
        for _ in range(size + 1):
            try:
                chain = q.pop()
            except ChainError:
                continue
            except QueueError:
                break
            if chain is None:
                break
            _check_chain(memory, chain)
    with GuestMemory.create(LAYOUT) as memory:
        run(memory)


def _outcome(queue, head):
    try:
        chain = queue.walk(head)
    except ChainError as e:
        return ("error", e.reason, e.head)
    return ("chain", chain.readable, chain.writable)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(80))
@given(descs=st.lists(_DESCS, min_size=8, max_size=8), table=st.lists(_DESCS, max_size=12),
       head=st.integers(0, 9), indirect=st.booleans())
def test_c_and_python_walkers_agree(descs, table, head, indirect):
    """Differential test: the C walker gives exactly the Python reference's answer."""
    if native_loader.load() is None:
        pytest.skip("the C chain walker cannot be built here")
    # The body is a function of its own: what it makes (queues, a device: they hold views of
    # guest RAM) are gone when the memory closes, so close needs no garbage collection.
    def run(memory):
        ring = DriverRing(memory, RING, 8)
        for i, (addr, length, flags, nxt) in enumerate(descs):
            ring.write_desc(i, addr, length, flags, nxt)
        for i, (addr, length, flags, nxt) in enumerate(table):
            memory.write(TABLE + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
        args = (memory, 8, ring.desc_table, ring.avail_ring, ring.used_ring)
        py = Queue(*args, indirect=indirect, native=False)
        c = Queue(*args, indirect=indirect, native=True)
        assert _outcome(py, head) == _outcome(c, head)
    with GuestMemory.create(LAYOUT) as memory:
        run(memory)


def _pop_all(queue, size):
    out = []
    for _ in range(size + 1):
        try:
            chain = queue.pop()
        except (ChainError, QueueError) as e:  # compared by kind and reason; nothing else may come out
            out.append((type(e).__name__, getattr(e, "reason", str(e))))
            if isinstance(e, QueueError):
                break
            continue
        if chain is None:
            break
        out.append(("chain", chain.head, chain.readable, chain.writable))
    return out


@pytest.mark.timeout(60)
@replay("ring", lambda data: (lambda seed: {"raw": bytes.fromhex(seed["raw"]), "table": bytes.fromhex(seed["table"]),
                                            "indirect": seed["indirect"]})(json.loads(data)))
@settings(FUZZ, max_examples=examples(40))
@given(raw=st.binary(min_size=8 * 16 + 6 + 16, max_size=8 * 16 + 6 + 16), table=st.binary(max_size=192),
       indirect=st.booleans())
def test_ring_pop_c_and_python_agree(raw, table, indirect):
    """Whole rings of random bytes popped by both walkers: the same chains and errors."""
    if native_loader.load() is None:
        pytest.skip("no C walker")
    def pop(memory, use_c):
        # A function of its own: the queue (holding views of guest RAM) is gone when the
        # memory closes, so close needs no garbage collection.
        ring = DriverRing(memory, 0x1000, 8)
        memory.write(ring.desc_table, raw[:128])
        memory.write(ring.avail_ring, raw[128:])
        memory.write(0x30000, table)
        q = Queue(memory, 8, ring.desc_table, ring.avail_ring, ring.used_ring, indirect=indirect, native=use_c)
        return _pop_all(q, 8)
    outcomes = []
    for use_c in (False, True):
        with GuestMemory.create([(0, 0x40000)]) as memory:
            outcomes.append(pop(memory, use_c))
    assert outcomes[0] == outcomes[1]

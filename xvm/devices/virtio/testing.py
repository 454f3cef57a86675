"""A guest-driver simulator for testing virtio devices without a guest.

:class:`DriverRing` is the driver's half of a split virtqueue laid out in a
real :class:`~xvm.kvm.memory.GuestMemory`; :class:`MmioDriver` drives a
virtio-mmio window register by register the way Linux's virtio_mmio does.
Test code only; nothing in the VMM imports this.
"""
import struct
import time

from .device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
)
from .mmio import (
    VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VERSION,
)
from .queue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, avail_ring_size,
    desc_table_size,
)

_DESC = struct.Struct("<QIHH")


def ring_footprint(size):
    """Bytes a DriverRing of ``size`` needs at its base (page-aligned parts)."""
    used_off = _align(desc_table_size(size) + avail_ring_size(size), 4096)
    return used_off + _align(6 + 8 * size, 4096)


def _align(n, a):
    return (n + a - 1) // a * a


class DriverRing:
    """The driver side of a split virtqueue at ``base`` in ``memory``."""

    def __init__(self, memory, base, size):
        self.memory = memory
        self.size = size
        self.desc_table = base
        self.avail_ring = base + desc_table_size(size)
        self.used_ring = base + _align(desc_table_size(size) + avail_ring_size(size), 4096)
        memory.fill(base, ring_footprint(size))
        self.avail_idx = 0
        self.last_used = 0
        self.next_free = 0

    def write_desc(self, index, addr, length, flags=0, next_index=0, table=None):
        base = self.desc_table if table is None else table
        self.memory.write(base + 16 * index, _DESC.pack(addr, length, flags, next_index))

    def add_chain(self, buffers):
        """``buffers``: list of ``(gpa, length, writable)``; descriptors are taken
        round-robin from the table.  Returns the head index (not yet published)."""
        indexes = [(self.next_free + i) % self.size for i in range(len(buffers))]
        self.next_free = (self.next_free + len(buffers)) % self.size
        for i, (gpa, length, writable) in enumerate(buffers):
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            nxt = 0
            if i + 1 < len(buffers):
                flags |= VIRTQ_DESC_F_NEXT
                nxt = indexes[i + 1]
            self.write_desc(indexes[i], gpa, length, flags, nxt)
        return indexes[0]

    def add_indirect_chain(self, buffers, table_gpa):
        """One descriptor pointing at an indirect table at ``table_gpa``."""
        for i, (gpa, length, writable) in enumerate(buffers):
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            if i + 1 < len(buffers):
                flags |= VIRTQ_DESC_F_NEXT
            self.write_desc(i, gpa, length, flags, i + 1, table=table_gpa)
        head = self.next_free
        self.next_free = (self.next_free + 1) % self.size
        self.write_desc(head, table_gpa, 16 * len(buffers), VIRTQ_DESC_F_INDIRECT)
        return head

    def publish(self, head):
        slot = self.avail_idx % self.size
        self.memory.write_u16(self.avail_ring + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_flags(self, flags):
        self.memory.write_u16(self.avail_ring, flags)

    def set_used_event(self, value):
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value)

    def avail_event(self):
        return self.memory.read_u16(self.used_ring + 4 + 8 * self.size)

    def used_idx(self):
        return self.memory.read_u16(self.used_ring + 2)

    def take_used(self):
        """New ``(id, len)`` used elements since the last call."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.last_used % self.size
            base = self.used_ring + 4 + 8 * slot
            out.append((self.memory.read_u32(base), self.memory.read_u32(base + 4)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def wait_used(self, count=1, timeout=5.0):
        """Poll until ``count`` new used elements appear (worker-thread tests)."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            got += self.take_used()
            if len(got) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(got)} of {count} used elements after {timeout}s")
            time.sleep(0.001)
        return got


class MmioDriver:
    """Drives a virtio-mmio window like Linux's virtio_mmio + virtio core."""

    def __init__(self, mmio, memory, ring_base, queue_size=None):
        self.mmio = mmio
        self.memory = memory
        self.ring_base = ring_base
        self.queue_size = queue_size
        self.rings = []

    def r(self, offset):
        return self.mmio.read(offset, 4)

    def w(self, offset, value):
        self.mmio.write(offset, 4, value)

    def status(self):
        return self.r(VIRTIO_MMIO_STATUS)

    def add_status(self, bits):
        self.w(VIRTIO_MMIO_STATUS, self.status() | bits)

    def device_features(self):
        self.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
        high = self.r(VIRTIO_MMIO_DEVICE_FEATURES)
        self.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0)
        return high << 32 | self.r(VIRTIO_MMIO_DEVICE_FEATURES)

    def write_features(self, features):
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, features >> 32)
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0)
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, features & 0xFFFFFFFF)

    def setup_queue(self, index, base):
        self.w(VIRTIO_MMIO_QUEUE_SEL, index)
        assert self.r(VIRTIO_MMIO_QUEUE_READY) == 0
        num_max = self.r(VIRTIO_MMIO_QUEUE_NUM_MAX)
        size = min(num_max, self.queue_size or num_max)
        ring = DriverRing(self.memory, base, size)
        self.w(VIRTIO_MMIO_QUEUE_NUM, size)
        for low, high, gpa in ((VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
                                ring.desc_table),
                               (VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                                ring.avail_ring),
                               (VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH,
                                ring.used_ring)):
            self.w(low, gpa & 0xFFFFFFFF)
            self.w(high, gpa >> 32)
        self.w(VIRTIO_MMIO_QUEUE_READY, 1)
        return ring

    def init(self, features=None, num_queues=1):
        """The full §3.1.1 sequence; returns the accepted features.  ``features``
        defaults to everything offered."""
        assert self.r(VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976
        assert self.r(VIRTIO_MMIO_VERSION) == 2
        self.w(VIRTIO_MMIO_STATUS, 0)
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(VIRTIO_CONFIG_S_DRIVER)
        offered = self.device_features()
        accepted = offered if features is None else features
        self.write_features(accepted)
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK)
        if not self.status() & VIRTIO_CONFIG_S_FEATURES_OK:
            raise RuntimeError("device refused FEATURES_OK")
        base = self.ring_base
        from .testing import ring_footprint
        for index in range(num_queues):
            ring = self.setup_queue(index, base)
            self.rings.append(ring)
            base += ring_footprint(ring.size)
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
        return accepted

    def kick(self, index=0):
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, index)

    def ack_interrupts(self):
        status = self.r(VIRTIO_MMIO_INTERRUPT_STATUS)
        self.w(VIRTIO_MMIO_INTERRUPT_ACK, status)
        return status

"""The split virtqueue (virtio 1.2 §2.7), device side.

A :class:`Queue` is pure code over a :class:`~xvm.kvm.memory.GuestMemory`:
it pops descriptor chains the driver made available and returns them on the
used ring.  Everything read from guest memory is hostile; each check below
cites the rule it enforces.  A malformed chain raises :class:`ChainError`
(the head is consumed, so the device can fail just that request); a broken
ring raises :class:`QueueError` (the device should set DEVICE_NEEDS_RESET).
Every loop is bounded by the queue size, so no guest can make ``pop()`` hang.

Memory ordering: the driver publishes descriptors before ``avail.idx`` and
we publish used elements before ``used.idx``.  On x86 (TSO) loads are not
reordered with loads nor stores with stores, so plain accesses suffice except
the store→load case in :meth:`Queue.needs_notification`, which uses a full
barrier.
"""
import struct
import threading

from ...errors import GuestMemoryError
from . import native as _native_loader
from .errors import ChainError, QueueError, VirtioConfigError

# §2.7.5 The Virtqueue Descriptor Table
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_DESC_SIZE = 16
# §2.7.6 The Virtqueue Available Ring / §2.7.8 The Virtqueue Used Ring
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
VIRTQ_USED_ELEM_SIZE = 8
# §2.7 "The maximum Queue Size value is 32768"
VIRTQ_MAX_SIZE = 32768
# §2.7.5.2 "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"
VIRTQ_MAX_CHAIN_BYTES = 1 << 32
# §2.7 "Virtqueue Part Alignment" table
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4

# Why a chain is refused; the codes are shared with the C walker (_native).
E_HEAD_RANGE = 1
E_TOO_LONG = 2
E_INDIRECT_NOT_NEGOTIATED = 3
E_NESTED_INDIRECT = 4
E_INDIRECT_WITH_NEXT = 5
E_INDIRECT_LEN = 6
E_INDIRECT_NOT_IN_RAM = 7
E_TOTAL_LEN = 8
E_BUFFER_NOT_IN_RAM = 9
E_READABLE_AFTER_WRITABLE = 10
E_NEXT_RANGE = 11
CHAIN_ERRORS = {
    E_HEAD_RANGE: "available ring head index >= Queue Size (§2.7.6)",
    E_TOO_LONG: "descriptor chain longer than Queue Size (§2.7.5.3.1)",
    E_INDIRECT_NOT_NEGOTIATED: "INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)",
    E_NESTED_INDIRECT: "nested indirect table (§2.7.5.3.1)",
    E_INDIRECT_WITH_NEXT: "INDIRECT together with NEXT (§2.7.5.3.1)",
    E_INDIRECT_LEN: "indirect table length is zero or not a multiple of 16 (§2.7.5.3)",
    E_INDIRECT_NOT_IN_RAM: "indirect table is not in guest RAM (§2.7.5.3)",
    E_TOTAL_LEN: "descriptor chain longer than 2^32 bytes (§2.7.5.2)",
    E_BUFFER_NOT_IN_RAM: "buffer is not in guest RAM (§2.7.5)",
    E_READABLE_AFTER_WRITABLE: "device-readable descriptor after a device-writable one (§2.7.4.2)",
    E_NEXT_RANGE: "next index beyond the descriptor table (§2.7.5)",
}

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")

_barrier_lock = threading.Lock()


def full_barrier():
    """A full memory barrier: a locked instruction orders our used.idx store
    before the following used_event/flags load (needed on x86 TSO too)."""
    with _barrier_lock:
        pass


def desc_table_size(size):
    return VIRTQ_DESC_SIZE * size


def avail_ring_size(size):
    """flags, idx, ring[size], used_event (§2.7.6)."""
    return 6 + 2 * size


def used_ring_size(size):
    """flags, idx, ring[size] of (id, len), avail_event (§2.7.8)."""
    return 6 + VIRTQ_USED_ELEM_SIZE * size


class DescriptorChain:
    """One available descriptor chain, checked and flattened.

    ``readable`` and ``writable`` are tuples of ``(gpa, length)`` pieces, each
    wholly inside one guest RAM region (a buffer that crosses from one region
    into an adjacent one is split).  Zero-length buffers are dropped.  (A
    plain slotted class, not a dataclass: it is made once per request.)
    """

    __slots__ = ("head", "readable", "writable", "memory")

    def __init__(self, head, readable, writable, memory):
        self.head = head
        self.readable = readable
        self.writable = writable
        self.memory = memory

    def __repr__(self):
        return (f"DescriptorChain(head={self.head}, readable={self.readable}, "
                f"writable={self.writable})")

    @property
    def readable_len(self):
        return sum(length for _, length in self.readable)

    @property
    def writable_len(self):
        return sum(length for _, length in self.writable)

    def readable_views(self):
        return [self.memory.view(gpa, length) for gpa, length in self.readable]

    def writable_views(self):
        return [self.memory.view(gpa, length) for gpa, length in self.writable]

    def read(self):
        """All device-readable bytes, concatenated (for small headers)."""
        return b"".join(self.memory.read(gpa, length) for gpa, length in self.readable)


def split_ranges(ranges, offset, length):
    """The sub-list of ``ranges`` (``(gpa, len)`` pieces) covering bytes
    ``[offset, offset+length)`` of their concatenation."""
    out = []
    for gpa, piece in ranges:
        if length <= 0:
            break
        if offset >= piece:
            offset -= piece
            continue
        take = min(piece - offset, length)
        out.append((gpa + offset, take))
        length -= take
        offset = 0
    if length > 0:
        raise ValueError("range beyond the buffers")
    return out


class Queue:
    """A split virtqueue at guest addresses, as configured by the driver.

    ``event_idx`` and ``indirect`` say whether VIRTIO_F_EVENT_IDX and
    VIRTIO_F_INDIRECT_DESC were negotiated.  The constructor checks the ring
    geometry and raises :class:`QueueError` if the driver's setup is unusable.

    ``native`` picks the chain walker: ``True`` the C one (an error if it is
    unavailable), ``False`` the Python reference, ``None`` (default) C when
    available.  The C walker caches host addresses of ``memory``'s regions:
    the memory must not be unmapped or extended while the queue lives.
    """

    def __init__(self, memory, size, desc_table, avail_ring, used_ring, *,
                 event_idx=False, indirect=False, native=None):
        # §2.7 "Queue Size value is always a power of 2. The maximum Queue Size value is 32768."
        if not (0 < size <= VIRTQ_MAX_SIZE) or size & (size - 1):
            raise QueueError("queue size is not a power of 2 in 1..32768 (§2.7)", size=size)
        # §2.7 Virtqueue Part Alignment
        for name, gpa, align in (("descriptor table", desc_table, VIRTQ_DESC_ALIGN),
                                 ("available ring", avail_ring, VIRTQ_AVAIL_ALIGN),
                                 ("used ring", used_ring, VIRTQ_USED_ALIGN)):
            if gpa % align:
                raise QueueError(f"{name} is not {align}-byte aligned (§2.7)", gpa=gpa)
        self.memory = memory
        self.size = size
        self.desc_table = desc_table
        self.avail_ring = avail_ring
        self.used_ring = used_ring
        self.event_idx = event_idx
        self.indirect = indirect
        try:
            # §2.7: the three parts must be in guest memory (we require each in one region).
            self._desc = memory.view(desc_table, desc_table_size(size))
            self._avail = memory.view(avail_ring, avail_ring_size(size))
            self._used = memory.view(used_ring, used_ring_size(size))
        except GuestMemoryError as e:
            raise QueueError("virtqueue part is not in guest RAM (§2.7)", gpa=e.gpa,
                             length=e.length) from None
        # The driver reads the used ring while we write it, so every field is written
        # with one aligned store through these typed views (§2.7.8: the used ring is
        # 4-byte aligned): struct.pack_into zero-fills before it stores, and a polling
        # driver could see that transient zero as used.idx.
        self._used_u16 = self._used.cast("H")  # [1] = idx, [2 + 4*size] = avail_event
        self._used_elems = self._used[4 : 4 + VIRTQ_USED_ELEM_SIZE * size].cast("I")  # id, len pairs
        self.next_avail = 0
        self.next_used = 0
        # used.idx when we last notified (or decided not to); None = never.
        self.signalled_used = None
        # The walker is stored as a plain function, not a bound method: a bound
        # method on self would make a reference cycle keeping the ring views (and
        # so the guest RAM mapping) alive after the queue is dropped.
        self._walker = Queue.walk_python
        module = _native_loader.load() if native is not False else None
        if module is not None:
            self._setup_native(module)
            self._walker = Queue.walk_native
        elif native:
            raise VirtioConfigError("the C chain walker is not available")

    @property
    def native(self):
        return self._walker is Queue.walk_native

    def _setup_native(self, module):
        ffi = module.ffi
        regions = self.memory.regions
        self._lib = module.lib
        self._c_regions = ffi.new("struct xvm_region[]", len(regions))
        for c, region in zip(self._c_regions, regions):
            c.gpa, c.size, c.host = region.gpa, region.size, region.host_address
        self._c_nregions = len(regions)
        self._c_desc = self.memory.host_address(self.desc_table, desc_table_size(self.size))
        # Each of at most 2*size descriptors yields at most one piece per region.
        self._c_max_out = 2 * self.size * max(1, len(regions))
        self._c_out = ffi.new("struct xvm_piece[]", self._c_max_out)
        self._c_words = memoryview(ffi.buffer(self._c_out)).cast("Q")
        self._c_nread = ffi.new("uint32_t *")
        self._c_ntotal = ffi.new("uint32_t *")
        self._c_err = ffi.new("uint64_t *")

    # -- driver → device ---------------------------------------------------------

    def avail_idx(self):
        return _U16.unpack_from(self._avail, 2)[0]

    def pending(self):
        """How many chains the driver has made available and we have not popped."""
        pending = (self.avail_idx() - self.next_avail) & 0xFFFF
        # §2.7.6: the driver cannot have more than Queue Size buffers outstanding.
        if pending > self.size:
            raise QueueError("avail.idx is more than Queue Size ahead of the device (§2.7.6)",
                             avail_idx=self.avail_idx(), next_avail=self.next_avail)
        return pending

    def pop(self):
        """The next available chain, or ``None`` if there is none.

        Raises :class:`ChainError` (head consumed) for a malformed chain and
        :class:`QueueError` for a corrupt available ring.
        """
        head = self.pop_head()
        if head is None:
            return None
        return self._walker(self, head)

    def pop_head(self):
        """Consume the next available ring entry and return it unchecked (the
        caller walks it, :meth:`walk`), or ``None`` if there is none.  Raises
        :class:`QueueError` for a corrupt available ring."""
        if not self.pending():
            return None
        slot = self.next_avail % self.size
        head = _U16.unpack_from(self._avail, 4 + 2 * slot)[0]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if self.event_idx:
            # §2.7.10: avail_event tells the driver when to notify us next.
            self._write_avail_event(self.next_avail)
        return head

    def native_args(self):
        """For C request paths (:mod:`._build_native`): ``(lib, regions, nregions,
        desc_table, queue_size, indirect, scratch, max_scratch)`` — the walker's
        arguments before ``head`` and its piece buffer — or None without the C
        walker."""
        if self._walker is not Queue.walk_native:
            return None
        return (self._lib, self._c_regions, self._c_nregions, self._c_desc, self.size,
                1 if self.indirect else 0, self._c_out, self._c_max_out)

    def native_rings(self):
        """Host addresses of the available and used rings (for C request paths,
        which then advance :attr:`next_avail` / :attr:`next_used` through
        :meth:`advance`)."""
        size = self.size
        return (self.memory.host_address(self.avail_ring, avail_ring_size(size)),
                self.memory.host_address(self.used_ring, used_ring_size(size)))

    def advance(self, count):
        """``count`` chains were popped and used in C: account for them."""
        self.next_avail = (self.next_avail + count) & 0xFFFF
        self.next_used = (self.next_used + count) & 0xFFFF

    def walk(self, head):
        """Parse the chain starting at descriptor ``head``."""
        return self._walker(self, head)

    def walk_native(self, head):
        """The C chain walker: same checks, same order, same errors."""
        rc = self._lib.xvm_walk_chain(
            self._c_regions, self._c_nregions, self._c_desc, self.size, head,
            1 if self.indirect else 0, self._c_out, self._c_max_out,
            self._c_nread, self._c_ntotal, self._c_err)
        if rc:
            reason = CHAIN_ERRORS.get(rc, f"chain walker error {rc}")
            raise ChainError(reason, head=None if rc == E_HEAD_RANGE else head,
                             value=self._c_err[0])
        nread = 2 * self._c_nread[0]
        words = self._c_words[:2 * self._c_ntotal[0]].tolist()
        readable = tuple(zip(words[0:nread:2], words[1:nread:2]))
        writable = tuple(zip(words[nread::2], words[nread + 1::2]))
        return DescriptorChain(head, readable, writable, self.memory)

    def walk_python(self, head):
        """The reference Python chain walker."""
        # §2.7.6 ring[] holds descriptor-table indices: a head beyond the table
        # cannot be returned to the used ring; the device must reset.
        if head >= self.size:
            raise ChainError(CHAIN_ERRORS[E_HEAD_RANGE], head=None,
                             index=head, size=self.size)
        readable = []
        writable = []
        total = 0
        table = self._desc
        table_len = self.size
        in_indirect = False
        index = head
        count = 0
        while True:
            # §2.7.5.3.1 "A driver MUST NOT create a descriptor chain longer than the Queue
            # Size of the device" (counted afresh inside an indirect table); this also
            # bounds every loop (§2.7.5.2 "loops in the descriptor chain are forbidden").
            count += 1
            if count > self.size:
                raise ChainError(CHAIN_ERRORS[E_TOO_LONG],
                                 head=head, size=self.size)
            addr, length, flags, next_index = _DESC.unpack_from(table, VIRTQ_DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                # §2.7.5.3.1 "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless
                # the VIRTIO_F_INDIRECT_DESC feature was negotiated."
                if not self.indirect:
                    raise ChainError(CHAIN_ERRORS[E_INDIRECT_NOT_NEGOTIATED], head=head,
                                     index=index)
                # §2.7.5.3.1 "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within
                # an indirect descriptor (i.e. only one table per descriptor)."
                if in_indirect:
                    raise ChainError(CHAIN_ERRORS[E_NESTED_INDIRECT], head=head,
                                     index=index)
                # §2.7.5.3.1 "A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and
                # VIRTQ_DESC_F_NEXT in flags."
                if flags & VIRTQ_DESC_F_NEXT:
                    raise ChainError(CHAIN_ERRORS[E_INDIRECT_WITH_NEXT], head=head,
                                     index=index)
                # §2.7.5.3: the table is len/16 descriptors; anything else is no table.
                if length == 0 or length % VIRTQ_DESC_SIZE:
                    raise ChainError(CHAIN_ERRORS[E_INDIRECT_LEN], head=head, length=length)
                try:
                    table = self.memory.view(addr, length)
                except GuestMemoryError:
                    raise ChainError(CHAIN_ERRORS[E_INDIRECT_NOT_IN_RAM],
                                     head=head, gpa=addr, length=length) from None
                table_len = length // VIRTQ_DESC_SIZE
                in_indirect = True
                index = 0
                count = 0
                continue
            # §2.7.5.2 "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"
            total += length
            if total > VIRTQ_MAX_CHAIN_BYTES:
                raise ChainError(CHAIN_ERRORS[E_TOTAL_LEN],
                                 head=head, total=total)
            if length:
                pieces = self._guest_ranges(head, addr, length)
                if flags & VIRTQ_DESC_F_WRITE:
                    writable.extend(pieces)
                else:
                    # §2.7.4.2 "The driver MUST place any device-writable descriptor
                    # elements after any device-readable descriptor elements."
                    if writable:
                        raise ChainError(CHAIN_ERRORS[E_READABLE_AFTER_WRITABLE],
                                         head=head, index=index)
                    readable.extend(pieces)
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            # §2.7.5: next indexes the same table; outside it there is no descriptor.
            if next_index >= table_len:
                raise ChainError(CHAIN_ERRORS[E_NEXT_RANGE],
                                 head=head, next=next_index, table_len=table_len)
            index = next_index
        return DescriptorChain(head, tuple(readable), tuple(writable), self.memory)

    def _guest_ranges(self, head, gpa, length):
        """``[gpa, gpa+length)`` as pieces each inside one RAM region (§2.7.5: the
        buffer is guest-physical memory; anything else is refused)."""
        pieces = []
        memory = self.memory
        # Bounded: every iteration consumes a whole region.
        while length:
            try:
                region = memory.region_of(gpa, 1)
            except GuestMemoryError:
                raise ChainError(CHAIN_ERRORS[E_BUFFER_NOT_IN_RAM], head=head, gpa=gpa,
                                 length=length) from None
            take = min(length, region.end - gpa)
            pieces.append((gpa, take))
            gpa += take
            length -= take
        return pieces

    # -- device → driver -------------------------------------------------------

    def add_used(self, head, length):
        """Return chain ``head`` to the driver with ``length`` bytes written (§2.7.8)."""
        if not 0 <= head < self.size:
            raise ValueError(f"head {head} is not a descriptor index")
        if self.memory.device_dirty is not None:  # a live migration runs
            self._device_wrote(head)
        slot = self.next_used % self.size
        self._used_elems[2 * slot] = head
        self._used_elems[2 * slot + 1] = length
        self.next_used = (self.next_used + 1) & 0xFFFF
        # §2.7.8.2: the element is visible before idx (stores are ordered on x86).
        self._used_u16[1] = self.next_used

    def _device_wrote(self, head):
        """Record for a live migration what completing chain ``head`` wrote: its writable
        buffers (the one place every device's writes into guest buffers pass — the C block
        path's preadv too) and the used ring.  The chain is still the device's until the
        used ring returns it, so its descriptors still say where the writes went."""
        memory = self.memory
        memory.device_wrote(self.used_ring, used_ring_size(self.size))
        try:
            chain = self.walk(head)
        except ChainError:
            return  # a malformed chain returned unused: nothing was written there
        for gpa, length in chain.writable:
            memory.device_wrote(gpa, length)

    def needs_notification(self):
        """Whether the driver wants a used-buffer notification now (§2.7.7).

        Call after one or more :meth:`add_used`; the answer accounts for
        everything added since the previous notification.
        """
        full_barrier()
        new = self.next_used
        old = self.signalled_used
        self.signalled_used = new
        if self.event_idx:
            if old is None:
                return True
            # §2.7.7.2 / §2.7.10: notify iff used_event lies in (old, new].
            used_event = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
            return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        # §2.7.7.2 without EVENT_IDX: the driver may set VIRTQ_AVAIL_F_NO_INTERRUPT.
        return not _U16.unpack_from(self._avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def enable_notification(self):
        """Ask the driver to notify on its next buffer; return True if buffers
        arrived meanwhile (so the caller must keep popping, §2.7.10)."""
        if self.event_idx:
            self._write_avail_event(self.next_avail)
        full_barrier()
        return self.pending() != 0

    def _write_avail_event(self, value):
        self._used_u16[2 + 4 * self.size] = value
        self.memory.device_wrote(self.used_ring, used_ring_size(self.size))

    # -- state -----------------------------------------------------------------

    def save(self):
        from .persist import QueueState
        return QueueState(self.size, self.desc_table, self.avail_ring, self.used_ring,
                          self.event_idx, self.indirect, self.next_avail, self.next_used,
                          self.signalled_used)

    @classmethod
    def restore(cls, memory, state, native=None):
        queue = cls(memory, state.size, state.desc_table, state.avail_ring, state.used_ring,
                    event_idx=state.event_idx, indirect=state.indirect, native=native)
        queue.next_avail = state.next_avail
        queue.next_used = state.next_used
        queue.signalled_used = state.signalled_used
        return queue

"""virtio-blk (virtio 1.2 §5.2): features, configuration space, request service.

``VirtioBlock(disk)`` opens the disk's backend (taking its lock) and is a
:class:`~xvm.devices.virtio.device.VirtioDevice`, so any transport can carry
it.  Requests are served on the transport's worker thread, in the virtio core's
bounded batches: reads and writes in C, several in flight side by side on a small
I/O pool (a request overlapping a write in flight, and every other type, waits for
what is in flight: a FLUSH covers the writes before it), a whole turn in one C call
(popped, done, on the used ring, the notification decided) until something needs
Python, the rest one chain at a time in Python (:meth:`VirtioBlock.process_chain`,
also the reference); a malformed request fails alone (IOERR/UNSUPP, or used length
0 when it has no status byte) and is counted as a guest error; a broken ring puts
the device in DEVICE_NEEDS_RESET (the core's business).
"""
import logging
import struct

from ..virtio.device import (
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, InterruptKind,
    VirtioDevice, bit,
)
from ..virtio import native as _native_loader
from ..virtio.errors import ChainError, QueueError
from .backend.blockdev import BlockDevice
from .backend.raw import SECTOR_SIZE, RawFile
from .errors import BackendError, DiskConfigError
from .metrics import BlockMetrics
from .persist import BlockState
from .request import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, Limits, RequestError, parse,
)

log = logging.getLogger(__name__)

# xvm_blk_start's answers (xvm/devices/virtio/_build_native.py)
_STARTED, _DONE_NOW, _NOT_C, _CONFLICT = 0, 1, 2, 3
# xvm_blk_serve's: XVM_TURN_* as Batch.serve_in_flight's turn events
_TURN_EVENTS = ("idle", "budget", "python", "conflict", "failed", "again", "stop", "ring",
                "again")
# struct xvm_blk_turn: what Python sets (up to signalled_used), then what it reads back
# (from budget on)
_TURN_IN = struct.Struct("<QQIiIIIIi")
_TURN_OUT_OFFSET = 24  # after capacity, parallel_min, threads, nowait
_TURN_OUT = struct.Struct("<IIIIiIIIIIQQ")
assert _TURN_OUT_OFFSET + _TURN_OUT.size == 80

# Backends whose readv/writev are plain preadv/pwritev on ``fd``: the C path may
# do them itself.
_FAST_BACKENDS = (RawFile, BlockDevice)

VIRTIO_ID_BLOCK = 2  # §5 Device Types

# §5.2.3 Feature bits
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

DEFAULT_QUEUE_SIZE = 256
# The C path keeps up to IN_FLIGHT requests of a queue in flight and runs those that are
# large (PARALLEL_MIN_BYTES or more) or would block (small reads not in the page cache)
# side by side on up to IO_THREADS helper threads (shared by the process's disks).
IN_FLIGHT = 32
IO_THREADS = 8
PARALLEL_MIN_BYTES = 64 * 1024
MAX_DISCARD_SECTORS = 1 << 23  # 4 GiB per segment
MAX_DISCARD_SEG = 32
DISCARD_SECTOR_ALIGNMENT = 8  # 4 KiB, the host file system's usual block

# §5.2.4 struct virtio_blk_config, up to and including write_zeroes_may_unmap
# and padding (72 bytes with the secure-erase fields, which stay 0).
_CONFIG = struct.Struct("<QIIHBBIBBHIBxHIIIIIBxxxIII")
assert _CONFIG.size == 72


class VirtioBlock(VirtioDevice):
    """A virtio-blk device over a :class:`~xvm.devices.block.Disk`.

    ``backend`` may be given instead of being opened from ``disk`` (tests,
    custom backends).  ``queue_size`` is QueueNumMax; SEG_MAX is
    ``queue_size - 2`` (header and status take two descriptors).
    """

    device_id = VIRTIO_ID_BLOCK

    def __init__(self, disk, *, backend=None, queue_size=DEFAULT_QUEUE_SIZE):
        super().__init__()
        if queue_size < 4 or queue_size & (queue_size - 1) or queue_size > 32768:
            raise DiskConfigError(f"virtio-blk queue size {queue_size} is not a power of 2 "
                                  "in 4..32768", getattr(disk, "path", None))
        self.disk = disk
        self.backend = backend if backend is not None else disk.open()
        self.readonly = bool(disk.readonly or self.backend.readonly)
        self.serial_bytes = disk.serial_bytes
        self.queue_max_sizes = (queue_size,)
        self.seg_max = queue_size - 2
        self.capacity = self.backend.size // SECTOR_SIZE
        self.metrics = BlockMetrics()
        self.limits = Limits(self.capacity, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
                             MAX_DISCARD_SECTORS, MAX_DISCARD_SEG)
        self._fast = None  # (queue, its C request engine or None)
        # the write counts as of the last fdatasync known to cover them (None: none yet): a
        # snapshot's or switchover's flush with nothing written since has nothing to sync
        self._synced_writes = None
        # The C path's I/O pool (xvm_blk_start): how many helper threads requests in
        # flight may use (0: one request after another), the request size worth a helper,
        # and whether smaller reads are first tried without blocking (page-cache hits
        # stay inline).
        self.io_threads = IO_THREADS
        self.parallel_min_bytes = PARALLEL_MIN_BYTES
        self.nowait = True
        # Whether the C path serves whole turns in one call (xvm_blk_serve: a request done
        # at once costs no Python) rather than one call per request.
        self.turns_in_c = True

    # -- features and configuration (§5.2.3, §5.2.4) --------------------------------

    @property
    def device_features(self):
        features = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC)
                    | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_BLK_F_SEG_MAX)
                    | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH))
        if self.readonly:
            features |= bit(VIRTIO_BLK_F_RO)
        else:
            if self.backend.supports_discard:
                features |= bit(VIRTIO_BLK_F_DISCARD)
            if self.backend.supports_write_zeroes:
                features |= bit(VIRTIO_BLK_F_WRITE_ZEROES)
        return features

    def config_space(self):
        return _CONFIG.pack(
            self.capacity,          # capacity, in 512-byte sectors
            0,                      # size_max (VIRTIO_BLK_F_SIZE_MAX not offered)
            self.seg_max,           # seg_max
            0, 0, 0,                # geometry: cylinders, heads, sectors
            SECTOR_SIZE,            # blk_size
            0, 0, 0, 0,             # topology
            0,                      # writeback (VIRTIO_BLK_F_CONFIG_WCE not offered)
            1,                      # num_queues
            self.limits.max_discard_sectors, self.limits.max_discard_seg,
            DISCARD_SECTOR_ALIGNMENT,
            self.limits.max_write_zeroes_sectors, self.limits.max_write_zeroes_seg,
            1,                      # write_zeroes_may_unmap
            0, 0, 0,                # secure erase (not offered)
        )

    def refresh_capacity(self):
        """Re-read the backend's size (the image was grown or shrunk on the host);
        if it changed, update ``capacity`` and send a configuration change
        notification (§5.2.4: the driver re-reads capacity).  Returns the new
        capacity in sectors."""
        size = self.backend._probe_size()
        if size % SECTOR_SIZE:
            raise DiskConfigError(f"disk image {self.disk.path!r} is now {size} bytes, not a "
                                  f"multiple of {SECTOR_SIZE}", self.disk.path)
        capacity = size // SECTOR_SIZE
        if capacity != self.capacity:
            self.backend.size = size
            self.capacity = capacity
            # One assignment: the worker sees the old limits or the new ones, never a mix.
            self.limits = Limits(capacity, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
                                 MAX_DISCARD_SECTORS, MAX_DISCARD_SEG)
            if self.interrupt is not None:
                self.interrupt.trigger(InterruptKind.CONFIG_CHANGE)
        return capacity

    # -- life cycle ----------------------------------------------------------------

    def activate(self, memory, queues, interrupt):
        # §5.2.5: the device has one request queue (no VIRTIO_BLK_F_MQ).
        if not queues or queues[0] is None:
            raise QueueError("virtio-blk activated without its request queue (§5.2.2)")
        super().activate(memory, queues, interrupt)
        self._fast = None

    def reset(self):
        super().reset()
        self._fast = None  # it holds the old queue's views of guest RAM

    def close(self):
        self._fast = None
        self.backend.close()

    # -- the data plane (worker thread) ----------------------------------------------

    def process_queue(self, index, batch):
        self.metrics.queue_notify_count += 1
        queue = batch.queue
        if self._fast is None or self._fast[0] is not queue:
            self._fast = (queue, self._fast_path(queue))
        fast = self._fast[1]
        if fast is None:
            super().process_queue(index, batch)
        else:
            batch.serve_in_flight(fast)

    def _fast_path(self, queue):
        """A :class:`_InFlight` doing IN/OUT in C (:mod:`..virtio._build_native`
        ``xvm_blk_start``: several side by side on its I/O pool) and everything
        else, errors included, through :meth:`handle`; None when the queue has
        no C walker or the backend is not a plain file descriptor
        (:class:`~.backend.raw.RawFile`)."""
        args = queue.native_args()
        if args is None or type(self.backend) not in _FAST_BACKENDS:
            return None
        return _InFlight(self, queue, _native_loader.load().ffi, args)

    def process_chain(self, index, chain):
        """Carry out one request; returns the used length (bytes written)."""
        return self.handle(chain)

    def handle(self, chain):
        """Carry out the request in ``chain``; returns the used length."""
        try:
            request = parse(chain, self.limits)
        except RequestError as e:
            self.metrics.invalid_request_count += 1
            if e.status == VIRTIO_BLK_S_UNSUPP:
                self.metrics.unsupported_count += 1
            self.guest_error(0, e.reason, f"request {chain.head} refused")
            if e.status_gpa is None:
                return 0
            chain.memory.write(e.status_gpa, bytes([e.status]))
            return 1
        written = 0
        try:
            status, written = self.execute(request)
        except BackendError as e:
            log.warning("%s: %s", self.name, e)
            self.metrics.io_error_count += 1
            status = VIRTIO_BLK_S_IOERR
        chain.memory.write(request.status_gpa, bytes([status]))
        return written + 1

    def execute(self, request):
        """Returns ``(status, bytes written to device-writable data)``."""
        kind = request.type
        if kind == VIRTIO_BLK_T_IN:
            views = [self.memory.view(gpa, n) for gpa, n in request.data]
            self.backend.readv(request.sector * SECTOR_SIZE, views)
            self.metrics.read_count += 1
            self.metrics.read_bytes += request.data_len
            return VIRTIO_BLK_S_OK, request.data_len
        if kind == VIRTIO_BLK_T_GET_ID:
            self.metrics.get_id_count += 1
            remaining = self.serial_bytes
            written = 0
            for gpa, n in request.data:
                if not remaining:
                    break
                self.memory.write(gpa, remaining[:n])
                written += min(n, len(remaining))
                remaining = remaining[n:]
            return VIRTIO_BLK_S_OK, written
        if kind == VIRTIO_BLK_T_FLUSH:
            # Offered by default; completes only after fdatasync (unsafe cache: no-op).
            self.metrics.flush_count += 1
            writes = self._writes()
            if self.backend.flush():
                self.metrics.fdatasync_count += 1
                self._synced_writes = writes
            return VIRTIO_BLK_S_OK, 0
        # Everything below writes the disk.
        if self.readonly:
            # §5.2.6.2 "A device MUST set the status byte to VIRTIO_BLK_S_IOERR for a write
            # request if the VIRTIO_BLK_F_RO feature if offered, and MUST NOT write any data."
            self.metrics.io_error_count += 1
            return VIRTIO_BLK_S_IOERR, 0
        if kind == VIRTIO_BLK_T_OUT:
            views = [self.memory.view(gpa, n) for gpa, n in request.data]
            self.backend.writev(request.sector * SECTOR_SIZE, views)
            self.metrics.write_count += 1
            self.metrics.write_bytes += request.data_len
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_DISCARD:
            # §5.2.6.2: only when VIRTIO_BLK_F_DISCARD was negotiated.
            if not self.has_acked(VIRTIO_BLK_F_DISCARD):
                self.metrics.unsupported_count += 1
                return VIRTIO_BLK_S_UNSUPP, 0
            for seg in request.segments:
                self.backend.discard(seg.sector * SECTOR_SIZE, seg.num_sectors * SECTOR_SIZE)
            self.metrics.discard_count += 1
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_WRITE_ZEROES:
            if not self.has_acked(VIRTIO_BLK_F_WRITE_ZEROES):
                self.metrics.unsupported_count += 1
                return VIRTIO_BLK_S_UNSUPP, 0
            for seg in request.segments:
                self.backend.write_zeroes(seg.sector * SECTOR_SIZE,
                                          seg.num_sectors * SECTOR_SIZE,
                                          bool(seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
            self.metrics.write_zeroes_count += 1
            return VIRTIO_BLK_S_OK, 0
        self.metrics.unsupported_count += 1
        return VIRTIO_BLK_S_UNSUPP, 0

    # -- state -------------------------------------------------------------------------

    def save(self):
        return BlockState(self.disk.path, self.readonly, self.disk.serial, self.disk.cache,
                          self.capacity, self.acked_features,
                          self.queue_max_sizes[0])

    def restore(self, state):
        """Load ``state`` into this device, built from the same configuration: the
        image must be the same size and read-only the same way."""
        if self.capacity != state.capacity:
            raise DiskConfigError(f"disk image {self.disk.path!r} has {self.capacity} sectors, "
                                  f"the snapshot expects {state.capacity}", self.disk.path)
        if self.readonly != state.readonly or self.queue_max_sizes[0] != state.queue_size:
            raise DiskConfigError(f"disk {self.disk.path!r} is configured unlike the snapshot's "
                                  f"(readonly, queue size)", self.disk.path)
        self.acked_features = state.acked_features

    def _writes(self):
        """Counts of the requests that changed the image (any request the C engine completes
        that is not a read counts as a write)."""
        m = self.metrics
        return m.write_count, m.discard_count, m.write_zeroes_count

    def flush(self):
        """Make every completed write durable (before a snapshot is taken); no fdatasync if
        nothing was written since the last one this device did (a guest's FLUSH, an earlier
        snapshot's).  Returns whether fdatasync ran."""
        writes = self._writes()
        if writes == self._synced_writes:
            return False
        ran = self.backend.flush()
        if ran:
            self._synced_writes = writes
        return ran


class _InFlight:
    """The engine of :meth:`~xvm.devices.virtio.batch.Batch.serve_in_flight` for
    one queue of a :class:`VirtioBlock`: its C context (up to ``width``
    requests in flight) and the counters."""

    def __init__(self, device, queue, ffi, args):
        lib, self._regions, self._nregions, self._desc, self._size, self._indirect, _, \
            max_scratch = args
        self._lib = lib
        self._device = device
        self._queue = queue
        self.width = min(IN_FLIGHT, queue.size)
        ctx = lib.xvm_blk_ctx_new(self.width, max_scratch)
        if ctx == ffi.NULL:
            raise MemoryError("virtio-blk: no memory for the C request context")
        # Freed with the engine; a turn never ends with requests in flight.
        self._ctx = ffi.gc(ctx, lib.xvm_blk_ctx_free)
        self._result = ffi.new("struct xvm_blk_result *")
        self._heads = ffi.new("uint32_t[]", self.width)
        self._results = ffi.new("struct xvm_blk_result[]", self.width)
        self._fd = device.backend.fd
        self._readonly = 1 if device.readonly else 0
        self.inflight = 0
        # The whole-turn path (xvm_blk_serve): the queue as C sees it, and one call's
        # in/out state, packed and unpacked in one go (_TURN_IN, _TURN_OUT).
        self._ffi = ffi
        c_queue = self._c_queue = ffi.new("struct xvm_blk_queue *")
        c_queue.regions, c_queue.nregions, c_queue.desc_table = args[1], args[2], args[3]
        c_queue.queue_size, c_queue.indirect_ok = queue.size, args[5]
        c_queue.avail_ring, c_queue.used_ring = queue.native_rings()
        c_queue.event_idx = 1 if queue.event_idx else 0
        c_queue.readonly, c_queue.fd = self._readonly, self._fd
        self._stop_flag = None
        self._c_turn = ffi.new("struct xvm_blk_turn *")
        self._turn_buffer = ffi.buffer(self._c_turn)
        self._turns_in_c = device.turns_in_c

    def _count(self, result):
        metrics = self._device.metrics
        if result.type == VIRTIO_BLK_T_IN:
            metrics.read_count += 1
            metrics.read_bytes += result.bytes
        else:
            metrics.write_count += 1
            metrics.write_bytes += result.bytes
        return result.used

    def start(self, head):
        device = self._device
        result = self._result
        rc = self._lib.xvm_blk_start(
            self._ctx, self._regions, self._nregions, self._desc, self._size, head,
            self._indirect, device.limits.capacity, self._readonly, self._fd, device.io_threads,
            device.parallel_min_bytes, 1 if device.nowait else 0, self._queue.pending(), result)
        if rc == _STARTED:
            self.inflight += 1
            return "started", None
        if rc == _DONE_NOW:
            return "done", self._count(result) if result.used else None
        return ("python" if rc == _NOT_C else "conflict"), None

    def reap(self, wait):
        n = self._lib.xvm_blk_reap(self._ctx, 1 if wait else 0, self._heads, self._results,
                                   self.width)
        self.inflight -= n
        results = self._results
        return [(self._heads[i], self._count(results[i]) if results[i].used else None)
                for i in range(n)]

    @property
    def turn(self):
        # a property: a bound method kept on self would be a reference cycle holding the
        # queue's views of guest RAM after the device is dropped
        return self._turn if self._turns_in_c else None

    def _turn(self, batch):
        """Serve what C can of ``batch``'s turn in one call (``xvm_blk_serve``); see
        :meth:`~xvm.devices.virtio.batch.Batch.serve_in_flight` for what it returns."""
        device = self._device
        queue = self._queue
        if batch.stop_flag is not self._stop_flag:  # a new worker
            self._stop_flag = batch.stop_flag
            self._c_queue.stop = self._ffi.NULL if batch.stop_flag is None else batch.stop_flag
        signalled = queue.signalled_used
        _TURN_IN.pack_into(self._turn_buffer, 0, device.limits.capacity,
                           device.parallel_min_bytes, device.io_threads,
                           1 if device.nowait else 0, batch.budget, queue.next_avail,
                           queue.next_used, batch.notified_used,
                           -1 if signalled is None else signalled)
        rc = self._lib.xvm_blk_serve(self._ctx, self._c_queue, self._c_turn, self._heads,
                                     self._results)
        (batch.budget, queue.next_avail, queue.next_used, batch.notified_used, signalled,
         notify, head, reaped, reads, writes, read_bytes, write_bytes) = \
            _TURN_OUT.unpack_from(self._turn_buffer, _TURN_OUT_OFFSET)
        queue.signalled_used = None if signalled < 0 else signalled
        if reads or writes:
            metrics = device.metrics
            metrics.read_count += reads
            metrics.read_bytes += read_bytes
            metrics.write_count += writes
            metrics.write_bytes += write_bytes
        if rc <= 1:  # idle, budget: nothing in flight
            self.inflight = 0
            return _TURN_EVENTS[rc], None, (), notify
        self.inflight = self._lib.xvm_blk_inflight(self._ctx)
        done = ()
        if reaped:
            heads, results = self._heads, self._results
            done = [(heads[i], results[i].used or None) for i in range(reaped)]
        return _TURN_EVENTS[rc], head, done, notify

    def reference(self, head):
        """The Python path for ``head``: used length, or the ChainError (without its
        traceback: held by the caller's frame, it would make a reference cycle through
        this frame keeping the device and its views of guest RAM until a collection)."""
        try:
            return self._device.handle(self._queue.walk(head))
        except ChainError as e:
            return e.with_traceback(None)

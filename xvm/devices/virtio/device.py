"""The transport-agnostic virtio device protocol, feature bits and status.

A device (block, net, console...) subclasses :class:`VirtioDevice`; a
transport (virtio-mmio, virtio-pci) adapts it to a bus.  The
transport owns the registers, the device-status state machine
(:class:`DeviceStatus`) and feature negotiation; the device owns its queues
once :meth:`VirtioDevice.activate` has handed them over, and serves them in
:meth:`VirtioDevice.process_chain` on the transport's worker thread, in
bounded batches driven by :mod:`.batch`.
"""
import enum
import logging
import os

from .errors import FeatureError, StatusError
from .guestlog import RateLimitedLog
from .metrics import VirtioMetrics

log = logging.getLogger(__name__)

# §2.1 Device Status Field
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# §6 Reserved Feature Bits (bit numbers)
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_RING_F_INDIRECT_DESC = VIRTIO_F_INDIRECT_DESC  # pre-1.1 name, <linux/virtio_ring.h>
VIRTIO_F_EVENT_IDX = 29
VIRTIO_RING_F_EVENT_IDX = VIRTIO_F_EVENT_IDX
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35

# Status bits the driver sets, each requiring the one before it (§3.1.1).
_DRIVER_SEQUENCE = (
    (VIRTIO_CONFIG_S_ACKNOWLEDGE, 0),
    (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
    (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
    (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
)
_KNOWN_STATUS = (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK
                 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_NEEDS_RESET
                 | VIRTIO_CONFIG_S_FAILED)


def bit(n):
    return 1 << n


def has_feature(features, n):
    return bool(features >> n & 1)


class InterruptKind(enum.IntFlag):
    """Why the device interrupts (§2.3); values are the virtio-mmio
    InterruptStatus bits (§4.2.2)."""

    USED_BUFFER = 1  # VIRTIO_MMIO_INT_VRING
    CONFIG_CHANGE = 2  # VIRTIO_MMIO_INT_CONFIG


class Interrupt:
    """What a device calls to notify the driver; given to it by the transport.

    ``trigger(kind, queue=None)`` may be called from the device's worker
    thread; a used buffer notification names its ``queue`` (§2.3: it is per
    virtqueue).  The transport records ``kind`` where the driver will look for
    it (the InterruptStatus register, that queue's MSI-X vector...) and raises
    the line.  ``queue=None`` means "some queue": every queue's vector fires.
    """

    def trigger(self, kind, queue=None):
        raise NotImplementedError


class EventFdLine:
    """An interrupt line that is an eventfd: the machine registers it with
    KVM_IRQFD, so writing it makes KVM inject the interrupt without a vCPU exit.
    Anything with ``trigger()`` can stand in (tests, a userspace irqchip)."""

    def __init__(self, fd=None):
        self.owned = fd is None
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if fd is None else fd

    def fileno(self):
        return self.fd

    def trigger(self):
        os.eventfd_write(self.fd, 1)

    def read(self):
        """Consume and return the pending count (0 if none); for tests/polling."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def close(self):
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class DeviceStatus:
    """The device status field (§2.1) and its legal driver transitions (§3.1.1).

    ``write(value)`` returns the bits the write newly set, or raises
    :class:`StatusError` leaving the status unchanged.  Writing 0 is a reset
    and is the caller's business (it returns 0 and clears the field).
    """

    def __init__(self, value=0):
        self.value = value

    def write(self, value):
        if value == 0:
            self.value = 0
            return 0
        if value & ~_KNOWN_STATUS:
            raise StatusError("unknown device status bits (§2.1)", status=self.value,
                              written=value)
        # §2.1.1 "The driver MUST NOT clear a device status bit" (only a reset, 0, clears).
        # DEVICE_NEEDS_RESET belongs to the device: the driver's copy of it is ignored.
        current = self.value & ~VIRTIO_CONFIG_S_NEEDS_RESET
        value = (value & ~VIRTIO_CONFIG_S_NEEDS_RESET) | (self.value & VIRTIO_CONFIG_S_NEEDS_RESET)
        if current & ~value:
            raise StatusError("driver cleared a device status bit without reset (§2.1.1)",
                              status=self.value, written=value)
        if self.value & VIRTIO_CONFIG_S_FAILED:
            raise StatusError("driver wrote status after FAILED without reset (§2.1.1)",
                              status=self.value, written=value)
        # §3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then DRIVER_OK.
        # FAILED may be set at any point (§2.1 "something went wrong in the guest").
        for step, requires in _DRIVER_SEQUENCE:
            if value & step and requires and not value & requires:
                raise StatusError(f"status {_name(step)} set before {_name(requires)} (§3.1.1)",
                                  status=self.value, written=value)
        newly = value & ~self.value
        self.value = value
        return newly

    def set_needs_reset(self):
        """The device hit an error it cannot recover from (§2.1.2)."""
        self.value |= VIRTIO_CONFIG_S_NEEDS_RESET

    def clear(self, bits):
        self.value &= ~bits

    def __contains__(self, bits):
        return self.value & bits == bits


def _name(step):
    return {VIRTIO_CONFIG_S_ACKNOWLEDGE: "ACKNOWLEDGE", VIRTIO_CONFIG_S_DRIVER: "DRIVER",
            VIRTIO_CONFIG_S_FEATURES_OK: "FEATURES_OK",
            VIRTIO_CONFIG_S_DRIVER_OK: "DRIVER_OK"}[step]


def negotiate(device_features, driver_features):
    """Check the driver's feature choice (§2.2, §6.1); raises FeatureError."""
    # §2.2.1 "The driver MUST NOT accept a feature which the device did not offer"
    extra = driver_features & ~device_features
    if extra:
        raise FeatureError("driver accepted features the device did not offer (§2.2.1)",
                           offered=device_features, accepted=driver_features, extra=extra)
    # §6.1 "A device MAY fail to operate further if VIRTIO_F_VERSION_1 is not accepted";
    # we offer no legacy interface (modern virtio-mmio, §4.2.4), so we require it.
    if not has_feature(driver_features, VIRTIO_F_VERSION_1):
        raise FeatureError("driver did not accept VIRTIO_F_VERSION_1 (§6.1)",
                           accepted=driver_features)
    return driver_features


class VirtioDevice:
    """Base class and protocol of a transport-agnostic virtio device.

    Subclasses set ``device_id`` (§5) and ``queue_max_sizes`` (one entry per
    virtqueue), and implement :meth:`device_features`, :meth:`config_space`
    and :meth:`process_chain` (one request) or, for work that is not one chain
    at a time, :meth:`process_queue` (one bounded turn).  The transport calls,
    in order: :meth:`ack_features` (at FEATURES_OK), :meth:`activate` (at
    DRIVER_OK), queue service on its worker thread through
    :func:`~.batch.serve_queue` (which owns the batch bound, the error
    handling and the used buffer notification) and :meth:`reset` (when the
    driver writes status 0; the worker is stopped first).

    Guest-caused errors go through :meth:`guest_error`: counted in
    ``metrics.guest_error_count`` and logged as one rate-limited line naming
    the device (``name``, set by the transport) and the rule broken.
    """

    device_id = 0
    vendor_id = 0x554D4551  # "QEMU" is what Linux shows by default; any value is legal
    queue_max_sizes = ()

    def __init__(self):
        self.acked_features = 0
        self.memory = None
        self.queues = ()
        self.interrupt = None
        self.broken = False
        self.metrics = VirtioMetrics()  # devices replace it with their own subclass
        self.guest_log = RateLimitedLog(log, type(self).__name__)
        # Broken rings get their own budget: at most one per reset, and the line
        # that explains DEVICE_NEEDS_RESET must not drown among malformed chains.
        self.ring_log = RateLimitedLog(log, type(self).__name__)

    @property
    def name(self):
        return self.guest_log.name

    @name.setter
    def name(self, value):
        self.guest_log.name = self.ring_log.name = value

    @property
    def num_queues(self):
        return len(self.queue_max_sizes)

    @property
    def device_features(self):
        """The features offered, as a 64-bit int (VIRTIO_F_VERSION_1 included)."""
        return bit(VIRTIO_F_VERSION_1)

    def ack_features(self, features):
        """Accept the negotiated features, or raise FeatureError (FEATURES_OK
        then stays clear, §3.1.1 step 6)."""
        self.acked_features = negotiate(self.device_features, features)

    def has_acked(self, n):
        return has_feature(self.acked_features, n)

    def config_space(self):
        """The device configuration space (§2.5) as bytes, little-endian."""
        return b""

    def read_config(self, offset, length):
        """``length`` bytes of configuration space at ``offset``; bytes beyond the
        end read as zero."""
        data = self.config_space()
        chunk = data[offset:offset + length]
        return chunk + bytes(length - len(chunk))

    def write_config(self, offset, data):
        """A driver write to configuration space; ignored unless overridden
        (§2.5: most fields are read-only)."""

    def activate(self, memory, queues, interrupt):
        """Take over ``queues`` (a list, ``None`` for queues the driver left
        unconfigured) after DRIVER_OK; raise to refuse (the transport then sets
        DEVICE_NEEDS_RESET)."""
        self.memory = memory
        self.queues = list(queues)
        self.interrupt = interrupt
        self.broken = False
        self.metrics.activate_count += 1

    def disable_queue(self, index):
        """The driver stopped using queue ``index`` while live (QueueReady 0,
        §4.2.2.2); the worker is stopped during this call."""
        if index < len(self.queues):
            self.queues[index] = None

    def queues_dropped(self, index, queue):
        """Whether ``queue`` is no longer this device's live queue ``index`` (a
        reset or QueueReady=0 took it away)."""
        queues = self.queues
        return index >= len(queues) or queues[index] is not queue

    # -- queue service (worker thread; driven by .batch.serve_queue) --------------

    def process_queue(self, index, batch):
        """One bounded turn on queue ``index``: by default every available chain
        through :meth:`process_chain`, within ``batch``'s budget."""
        batch.serve_chains(lambda chain: self.process_chain(index, chain))

    def process_chain(self, index, chain):
        """Carry out the request in ``chain`` (a checked
        :class:`~.queue.DescriptorChain` of queue ``index``); return the used
        length (bytes written into its device-writable buffers)."""
        raise NotImplementedError

    def guest_error(self, index, error, what="guest error"):
        """The driver broke a rule (``error``'s text names it): count it and log
        one line, rate-limited."""
        self._guest_error(self.guest_log, index, error, what)

    def invalid_chain(self, index, error):
        """A malformed chain (:class:`~.errors.ChainError`), returned unused."""
        self.metrics.invalid_chain_count += 1
        self.guest_error(index, error, "malformed chain")

    def ring_error(self, index, error):
        """The ring itself is corrupt (§2.1.2): stop serving until reset."""
        self.metrics.queue_error_count += 1
        self._guest_error(self.ring_log, index, error, "ring unusable, device needs reset")
        self.mark_broken()

    def _guest_error(self, limited_log, index, error, what):
        self.metrics.guest_error_count += 1
        where = f"queue {index}: " if index is not None else ""
        # The text, not the exception: a record a handler keeps (pytest's capture, a queue
        # handler) would keep its traceback, and through it the device's frames and views
        # of guest RAM, which then could not be unmapped without a garbage collection.
        limited_log.emit(logging.WARNING, "%s%s: %s", where, what, str(error))

    def mark_broken(self):
        """Serve nothing more until reset; devices with event sources stop them."""
        self.broken = True

    def reset(self):
        """Back to the initial state (§2.4); the worker is already stopped."""
        self.acked_features = 0
        self.memory = None
        self.queues = ()
        self.interrupt = None
        self.broken = False
        self.guest_log.flush()
        self.ring_log.flush()

    def event_sources(self):
        """Extra ``(fd, queue_index, work)`` triples for the worker's epoll (a TAP
        fd, a backend completion eventfd): when ``fd`` is readable the core runs
        ``work(queue_index, batch)`` as one turn of that queue, like
        :meth:`process_queue`.  None by default."""
        return ()

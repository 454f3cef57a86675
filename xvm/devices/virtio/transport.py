"""What every virtio transport shares: status, features, queue setup, worker.

:class:`VirtioTransport` holds the transport-independent state of one virtio
function and drives its :class:`~.device.VirtioDevice` through the life cycle
of §3.1: feature negotiation at FEATURES_OK, activation and the data-plane
worker at DRIVER_OK, reset on status 0.  virtio-mmio (:mod:`.mmio`) maps its
registers onto it; virtio-pci (:mod:`.pci`) its capabilities.

Threads: register accesses come from vCPU threads (serialised here by a
lock); queue service runs on the worker thread; ``interrupt_status`` is
shared and guarded by its own lock.  The worker never takes the register
lock, so a reset, QueueReady=0 or pause may stop it while holding that lock;
queue service is bounded (:mod:`.batch`), so that stop waits for one request
at most, and it never raises: a worker stuck in a hung backend call is
abandoned after :data:`~.worker.STOP_TIMEOUT` and writes nothing more to the rings.
"""
import logging
import os
import threading
from dataclasses import dataclass

from .device import (
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, DeviceStatus, EventFdLine, Interrupt, InterruptKind,
)
from ...errors import GuestError
from .batch import serve_queue
from .errors import FeatureError, QueueError, StatusError, VirtioConfigError
from .guestlog import RateLimitedLog
from .persist import QueueConfigState, TransportState
from .queue import Queue
from . import native as _native_loader
from .worker import Worker, drain_eventfd

log = logging.getLogger(__name__)

_CONFIG_CHANGE = InterruptKind.CONFIG_CHANGE.value


@dataclass
class QueueConfig:
    """One virtqueue's registers as the driver sets them (§4.2.3.2)."""

    max_size: int
    size: int = 0
    ready: bool = False
    desc_table: int = 0
    avail_ring: int = 0
    used_ring: int = 0

    def clear(self):
        self.size = 0
        self.ready = False
        self.desc_table = self.avail_ring = self.used_ring = 0


class TransportInterrupt(Interrupt):
    """The :class:`Interrupt` a transport hands to its device."""

    def __init__(self, transport):
        self._transport = transport

    def trigger(self, kind, queue=None):
        self._transport.raise_interrupt(kind, queue)


class VirtioTransport:
    """Transport-independent state and life cycle of one virtio function.

    ``irq`` is the interrupt line: anything with ``trigger()``, or an int
    eventfd (registered by the machine with KVM_IRQFD).
    """

    def __init__(self, device, memory, irq, *, name=None, resample_fd=None):
        if not device.queue_max_sizes:
            raise VirtioConfigError(f"{type(device).__name__} declares no virtqueues")
        self.device = device
        self.memory = memory
        self.irq = EventFdLine(irq) if isinstance(irq, int) else irq
        self.name = name or f"virtio-{device.device_id}"
        device.name = self.name
        self._illegal_log = RateLimitedLog(log, self.name)
        self.status = DeviceStatus()
        self.driver_features = 0
        self.queue_configs = [QueueConfig(m) for m in device.queue_max_sizes]
        self.interrupt_status = 0
        self.config_generation = 0
        self.illegal_access_count = 0
        self._notify_fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                            for _ in device.queue_max_sizes]
        self._irq_lock = threading.Lock()
        self._lock = threading.RLock()
        self._worker = None
        self.resample_fd = resample_fd
        self.active = False
        self.paused = False
        # Find (or build, once per host) the C chain walker now, on the control plane,
        # not on a vCPU thread at DRIVER_OK.
        _native_loader.load()

    # -- notifications -----------------------------------------------------

    def notify_eventfds(self):
        """One eventfd per queue, index = queue index, stable for the
        transport's life.  The machine registers each as a KVM ioeventfd on
        the transport's notify address with datamatch = queue index."""
        return list(self._notify_fds)

    def notify(self, index):
        """A queue notification that reached us through the bus (no ioeventfd):
        forward it to the worker, never serve it on the vCPU thread."""
        if 0 <= index < len(self._notify_fds):
            os.eventfd_write(self._notify_fds[index], 1)
        else:
            self._illegal("notify of a queue that does not exist (§4.2.2)", queue=index)

    def raise_interrupt(self, kind, queue=None):
        """Notify the driver: ``kind`` says why, ``queue`` which queue has used
        buffers (None: any of them)."""
        # Plain ints where it can: flag arithmetic on InterruptKind costs on every used buffer.
        if type(kind) is not InterruptKind:
            kind = InterruptKind(kind)
        bits = int(kind)
        with self._irq_lock:
            if bits & _CONFIG_CHANGE:
                self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
            vectors = self._message_vectors(kind, queue)
            if vectors is None:
                # The line-based way: the interrupt status register says why.
                self.interrupt_status |= bits
        if vectors is None:
            self.irq.trigger()
        else:
            for vector in vectors:
                self._signal_vector(vector)

    def _message_vectors(self, kind, queue):
        """The message-signalled vectors to raise for ``kind`` on ``queue``
        (called under the interrupt lock), or None to use the interrupt line;
        transports with MSI-X override this and :meth:`_signal_vector`."""
        return None

    def _signal_vector(self, vector):
        raise NotImplementedError

    def ack_interrupt(self, bits):
        with self._irq_lock:
            self.interrupt_status &= ~bits

    def resample(self):
        """For a level-triggered line: re-raise it if the driver left bits set
        (call when the machine's resamplefd fires)."""
        if self.interrupt_status:
            self.irq.trigger()

    # -- status and features (§2.1, §2.2, §3.1) ------------------------------

    def write_status(self, value):
        with self._lock:
            if value == 0:
                self.reset()
                return
            try:
                newly = self.status.write(value)
            except StatusError as e:
                self._illegal(str(e))
                return
            if newly & VIRTIO_CONFIG_S_FEATURES_OK:
                try:
                    self.device.ack_features(self.driver_features)
                except FeatureError as e:
                    # §3.1.1 step 6: the driver re-reads status and sees FEATURES_OK clear.
                    self._illegal_log.emit(logging.INFO, "features refused: %s", e)
                    self.status.clear(VIRTIO_CONFIG_S_FEATURES_OK)
            if newly & VIRTIO_CONFIG_S_DRIVER_OK and self._activate():
                self._start_worker()

    def write_driver_features(self, word, value):
        """Set 32 bits ``word`` of the driver's features (§4.2.2 DriverFeatures)."""
        with self._lock:
            # §3.1.1: features are written before FEATURES_OK and are fixed after it.
            if VIRTIO_CONFIG_S_FEATURES_OK in self.status:
                self._illegal("driver features written after FEATURES_OK (§3.1.1)")
                return
            if word > 1:
                return  # no feature bits beyond 63 exist; writes are ignored
            shift = 32 * word
            self.driver_features = ((self.driver_features & ~(0xFFFFFFFF << shift))
                                    | ((value & 0xFFFFFFFF) << shift))

    def device_features_word(self, word):
        if word > 1:
            return 0
        return (self.device.device_features >> (32 * word)) & 0xFFFFFFFF

    # -- queue setup (§4.2.3.2) ------------------------------------------------

    def queue_config(self, index):
        return self.queue_configs[index] if 0 <= index < len(self.queue_configs) else None

    def queue_writable(self, index, what):
        """The config of queue ``index`` if the driver may change it now."""
        config = self.queue_config(index)
        if config is None:
            self._illegal(f"{what} for a queue that does not exist (§4.2.3.2)", queue=index)
            return None
        # §4.2.3.2: a queue is configured while QueueReady is 0 and before DRIVER_OK.
        if config.ready or self.active:
            self._illegal(f"{what} while the queue is ready (§4.2.3.2)", queue=index)
            return None
        return config

    def set_queue_ready(self, index, ready):
        with self._lock:
            config = self.queue_config(index)
            if config is None:
                self._illegal("QueueReady for a queue that does not exist", queue=index)
                return
            if not ready:
                # §4.2.2.2 "To stop using the queue the driver MUST write zero (0x0) to
                # this QueueReady register and MUST read the value back": honour it even
                # while live, with the worker stopped so no request is half served.
                if self.active and config.ready:
                    worker = self._stop_worker()
                    self.device.disable_queue(index)
                    if worker is not None:
                        self._start_worker()
                config.ready = False
                return
            if config.ready:
                return
            # §4.2.2.2 "The driver MUST NOT write a value which is greater than the size of
            # the queue the device supports to QueueNum"; §2.7 ring geometry and placement.
            if config.size > config.max_size:
                self._fail_queue(index, QueueError("QueueNum above QueueNumMax (§4.2.2.2)",
                                                   size=config.size, max=config.max_size))
                return
            try:
                Queue(self.memory, config.size, config.desc_table, config.avail_ring,
                      config.used_ring, native=False)
            except QueueError as e:
                self._fail_queue(index, e)
                return
            config.ready = True

    def _fail_queue(self, index, error):
        self._illegal_log.emit(logging.WARNING, "queue %d unusable: %s", index, error)
        self.illegal_access_count += 1
        self.status.set_needs_reset()

    # -- life cycle --------------------------------------------------------------

    def _activate(self):
        features = self.device.acked_features
        queues = []
        try:
            for config in self.queue_configs:
                if not config.ready:
                    queues.append(None)
                    continue
                queues.append(Queue(self.memory, config.size, config.desc_table,
                                    config.avail_ring, config.used_ring,
                                    event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1),
                                    indirect=bool(features >> VIRTIO_F_INDIRECT_DESC & 1)))
            self.device.activate(self.memory, queues, TransportInterrupt(self))
        except Exception as e:  # the device refused: the driver sees NEEDS_RESET (§2.1.2)
            self._illegal_log.emit(logging.WARNING, "activation failed: %s", e,
                                   exc_info=None if isinstance(e, GuestError) else e)
            self.status.set_needs_reset()
            self.raise_interrupt(InterruptKind.CONFIG_CHANGE)
            return False
        self.active = True
        return True

    def _start_worker(self):
        worker = Worker(name=self.name, on_error=self._device_error)
        for index, fd in enumerate(self._notify_fds):
            worker.add_eventfd(fd, self._serve_callback(index, None, worker))
        if self.resample_fd is not None:
            worker.add_eventfd(self.resample_fd, self.resample)
        for fd, index, work in self.device.event_sources():
            serve = self._serve_callback(index, work, worker)
            worker.add(fd, lambda events, serve=serve: serve())
        worker.start()
        self._worker = worker
        # Notifications that arrived before DRIVER_OK are already pending on the eventfds.

    def _stop_worker(self):
        """Take the worker off the data plane and stop it (bounded, never
        raising); returns it, or None if there was none."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        return worker

    def pause(self):
        """Quiesce the data plane: the request being served completes, the worker
        stops; notifications that arrive meanwhile, and work a busy queue still
        had, stay pending on their eventfds.  Call before :meth:`save` on a live
        device."""
        with self._lock:
            self._stop_worker()
            self.paused = True

    def resume(self):
        with self._lock:
            self.paused = False
            if self.active and self._worker is None:
                self._start_worker()
                self._look_at_every_queue()

    def _look_at_every_queue(self):
        """Each live queue looked at once as if notified: a kick that a pause or a save
        took from its eventfd before it was served, or work a queue still had when the
        worker stopped, is not lost; one notification too many is harmless."""
        for index, queue in enumerate(self.device.queues):
            if queue is not None and index < len(self._notify_fds):
                os.eventfd_write(self._notify_fds[index], 1)

    def _serve_callback(self, index, work, worker):
        """One bounded turn of queue ``index`` (``work`` or the device's
        process_queue) on ``worker``; left-over work re-arms the queue's eventfd,
        behind every other ready fd."""
        device = self.device
        notify_fd = self._notify_fds[index] if 0 <= index < len(self._notify_fds) else -1

        def stop():
            return worker.stop_requested

        def abandoned():
            return worker.abandoned

        def serve():
            if worker.abandoned:
                return
            # A queue the driver never set up (or stopped using) is not served.
            batch = serve_queue(device, index, work, stop=stop, abandoned=abandoned,
                                stop_flag=worker.stop_flag)
            if batch is None:
                return
            if device.broken:
                self._device_error(None)
            elif batch.more and work is None and not worker.abandoned and notify_fd >= 0:
                # An event source (level-triggered, like a readable TAP) fires again
                # by itself; a queue's notification is an edge we must re-arm.
                os.eventfd_write(notify_fd, 1)
        return serve

    def _device_error(self, exc):
        """The device could not go on (a broken ring, a VMM bug): §2.1.2 "the
        device SHOULD set DEVICE_NEEDS_RESET" and then sends a configuration
        change notification."""
        if exc is not None:
            self.device.mark_broken()
        self.status.set_needs_reset()
        self.raise_interrupt(InterruptKind.CONFIG_CHANGE)

    def reset(self):
        """Device reset (§2.4): stop the worker, reset the device, clear state.
        Bounded by one request in service; never raises."""
        with self._lock:
            self._stop_worker()
            self.active = False
            self.paused = False
            self.device.reset()
            self.status.write(0)
            self.driver_features = 0
            for config in self.queue_configs:
                config.clear()
            with self._irq_lock:
                self.interrupt_status = 0
            for fd in self._notify_fds:
                drain_eventfd(fd)

    def close(self):
        self.reset()
        for fd in self._notify_fds:
            os.close(fd)
        self._notify_fds = []

    def _illegal(self, message, **details):
        self.illegal_access_count += 1
        detail = "".join(f" {k}={v}" for k, v in details.items())
        self._illegal_log.emit(logging.INFO, "ignored illegal driver access: %s%s",
                               message, detail)

    # -- state -------------------------------------------------------------------

    def save(self):
        """Transport state; consistent only while the data plane is quiesced
        (:meth:`pause`, with the vCPUs stopped) or inactive."""
        active = ()
        if self.active:
            active = tuple(q.save() for q in self.device.queues if q is not None)
        return TransportState(
            self.status.value, self.driver_features, self.interrupt_status,
            self.config_generation,
            tuple(QueueConfigState(c.size, c.ready, c.desc_table, c.avail_ring, c.used_ring)
                  for c in self.queue_configs),
            active,
        )

    def restore(self, state, *, paused=False):
        """Load ``state`` into this transport (reset first); re-activates the
        device if the state was live and starts its worker unless ``paused``
        (then :meth:`resume` starts it)."""
        with self._lock:
            self.reset()
            self.driver_features = state.driver_features
            for config, saved in zip(self.queue_configs, state.queues):
                config.size, config.ready = saved.size, saved.ready
                config.desc_table, config.avail_ring = saved.desc_table, saved.avail_ring
                config.used_ring = saved.used_ring
            self.config_generation = state.config_generation
            self.status.value = state.status
            if state.status & VIRTIO_CONFIG_S_FEATURES_OK:
                self.device.ack_features(state.driver_features)
            live = False
            if state.status & VIRTIO_CONFIG_S_DRIVER_OK:
                live = self._activate()
                if live:
                    saved = iter(state.active_queues)
                    for queue in self.device.queues:
                        if queue is not None:
                            s = next(saved)
                            queue.next_avail, queue.next_used = s.next_avail, s.next_used
                            queue.signalled_used = s.signalled_used
                    # The saved machine's kicks that were still pending on its eventfds (or
                    # work a busy queue had left when it paused) are not in the state.
                    self._look_at_every_queue()
            with self._irq_lock:
                self.interrupt_status = state.interrupt_status
            if live:
                if paused:
                    self.paused = True
                else:
                    self._start_worker()

"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2).

:class:`VirtioMmioDevice` adapts any :class:`~.device.VirtioDevice` to the
machine's MMIO bus: ``read(offset, size)`` / ``write(offset, size, value)``
with ``offset`` relative to the device's base.  Every register value comes
from the guest and is checked here or in :class:`~.transport.VirtioTransport`.

Wiring (done by the machine): register the window ``[base, base+MMIO_SIZE)``
on the MMIO bus; for each ``(index, fd)`` in ``enumerate(notify_eventfds())``
register a KVM ioeventfd at ``base + VIRTIO_MMIO_QUEUE_NOTIFY``, 4 bytes,
datamatch ``index``; give the constructor an eventfd registered with
KVM_IRQFD for the device's GSI.  Edge-triggered is the simple case; for a
level-triggered line register the irqfd with a resamplefd and pass that
resamplefd as ``resample_fd``: the worker then re-raises the line while
InterruptStatus is non-zero.
"""
import struct

from .transport import VirtioTransport

# §4.2.2 MMIO Device Register Layout (names from <linux/virtio_mmio.h>)
VIRTIO_MMIO_MAGIC_VALUE = 0x000
VIRTIO_MMIO_VERSION = 0x004
VIRTIO_MMIO_DEVICE_ID = 0x008
VIRTIO_MMIO_VENDOR_ID = 0x00C
VIRTIO_MMIO_DEVICE_FEATURES = 0x010
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014
VIRTIO_MMIO_DRIVER_FEATURES = 0x020
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024
VIRTIO_MMIO_QUEUE_SEL = 0x030
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034
VIRTIO_MMIO_QUEUE_NUM = 0x038
VIRTIO_MMIO_QUEUE_READY = 0x044
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060
VIRTIO_MMIO_INTERRUPT_ACK = 0x064
VIRTIO_MMIO_STATUS = 0x070
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090
VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094
VIRTIO_MMIO_QUEUE_USED_LOW = 0x0A0
VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0A4
VIRTIO_MMIO_SHM_SEL = 0x0AC
VIRTIO_MMIO_SHM_LEN_LOW = 0x0B0
VIRTIO_MMIO_SHM_LEN_HIGH = 0x0B4
VIRTIO_MMIO_SHM_BASE_LOW = 0x0B8
VIRTIO_MMIO_SHM_BASE_HIGH = 0x0BC
VIRTIO_MMIO_QUEUE_RESET = 0x0C0
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC
VIRTIO_MMIO_CONFIG = 0x100

VIRTIO_MMIO_MAGIC = 0x74726976  # "virt"
VIRTIO_MMIO_VERSION_MODERN = 2
MMIO_SIZE = 0x200  # the usual window; config space is what fits after 0x100

_ADDRESS_REGISTERS = {
    VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc_table", 0),
    VIRTIO_MMIO_QUEUE_DESC_HIGH: ("desc_table", 32),
    VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail_ring", 0),
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail_ring", 32),
    VIRTIO_MMIO_QUEUE_USED_LOW: ("used_ring", 0),
    VIRTIO_MMIO_QUEUE_USED_HIGH: ("used_ring", 32),
}
_CONFIG_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
                   8: struct.Struct("<Q")}


class VirtioMmioDevice:
    """A virtio device behind a virtio-mmio (version 2) register window."""

    def __init__(self, device, memory, irq, *, name=None, resample_fd=None):
        self.transport = VirtioTransport(device, memory, irq, name=name,
                                         resample_fd=resample_fd)
        self.device = device
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.shm_sel = 0

    # -- the machine's side ----------------------------------------------------

    def notify_eventfds(self):
        """Eventfds to register as KVM ioeventfds at base+VIRTIO_MMIO_QUEUE_NOTIFY,
        4 bytes, datamatch = list index (the queue index)."""
        return self.transport.notify_eventfds()

    notify_offset = VIRTIO_MMIO_QUEUE_NOTIFY
    size = MMIO_SIZE

    @property
    def interrupt_status(self):
        return self.transport.interrupt_status

    def resample(self):
        self.transport.resample()

    def pause(self):
        self.transport.pause()

    def resume(self):
        self.transport.resume()

    def save(self):
        """A :class:`~.persist.VirtioMmioState` (transport and selector registers)."""
        from .persist import VirtioMmioState
        return VirtioMmioState(self.transport.save(), self.device_features_sel,
                               self.driver_features_sel, self.queue_sel, self.shm_sel)

    def restore(self, state, *, paused=False):
        """Load a :class:`~.persist.VirtioMmioState` (or a bare TransportState) in place."""
        from .persist import VirtioMmioState
        if isinstance(state, VirtioMmioState):
            self.device_features_sel, self.driver_features_sel = (state.device_features_sel,
                                                                  state.driver_features_sel)
            self.queue_sel, self.shm_sel = state.queue_sel, state.shm_sel
            state = state.transport
        self.transport.restore(state, paused=paused)

    def close(self):
        self.transport.close()

    # -- bus protocol ------------------------------------------------------------

    def read(self, offset, size):
        if offset >= VIRTIO_MMIO_CONFIG:
            return self._read_config(offset - VIRTIO_MMIO_CONFIG, size)
        # §4.2.2.2 "The driver MUST only use 32 bit wide and aligned reads and writes to
        # access the control registers"; anything else reads as 0.
        if size != 4 or offset % 4:
            self.transport._illegal("control register read not 32-bit aligned (§4.2.2.2)",
                                    offset=hex(offset), size=size)
            return 0
        t = self.transport
        queue = t.queue_config(self.queue_sel)
        if offset == VIRTIO_MMIO_MAGIC_VALUE:
            return VIRTIO_MMIO_MAGIC
        if offset == VIRTIO_MMIO_VERSION:
            return VIRTIO_MMIO_VERSION_MODERN
        if offset == VIRTIO_MMIO_DEVICE_ID:
            return self.device.device_id
        if offset == VIRTIO_MMIO_VENDOR_ID:
            return self.device.vendor_id
        if offset == VIRTIO_MMIO_DEVICE_FEATURES:
            return t.device_features_word(self.device_features_sel)
        if offset == VIRTIO_MMIO_QUEUE_NUM_MAX:
            # §4.2.2: 0 for a queue that is not available.
            return queue.max_size if queue else 0
        if offset == VIRTIO_MMIO_QUEUE_READY:
            return int(queue.ready) if queue else 0
        if offset == VIRTIO_MMIO_INTERRUPT_STATUS:
            return t.interrupt_status
        if offset == VIRTIO_MMIO_STATUS:
            return t.status.value
        if offset in (VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH):
            return 0xFFFFFFFF  # §4.2.2: a non-existent region has length -1
        if offset in (VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_BASE_HIGH):
            return 0xFFFFFFFF
        if offset == VIRTIO_MMIO_QUEUE_RESET:
            return 0  # VIRTIO_F_RING_RESET is not offered
        if offset == VIRTIO_MMIO_CONFIG_GENERATION:
            return t.config_generation
        if offset in _ADDRESS_REGISTERS or offset in (VIRTIO_MMIO_QUEUE_NUM,):
            # Write-only in the spec; reading back what was written is harmless.
            if queue is None:
                return 0
            if offset == VIRTIO_MMIO_QUEUE_NUM:
                return queue.size
            attr, shift = _ADDRESS_REGISTERS[offset]
            return getattr(queue, attr) >> shift & 0xFFFFFFFF
        t._illegal("read of a write-only or reserved register (§4.2.2)", offset=hex(offset))
        return 0

    def write(self, offset, size, value):
        if offset >= VIRTIO_MMIO_CONFIG:
            self._write_config(offset - VIRTIO_MMIO_CONFIG, size, value)
            return
        t = self.transport
        # §4.2.2.2: control registers are accessed 32 bits wide and aligned.
        if size != 4 or offset % 4:
            t._illegal("control register write not 32-bit aligned (§4.2.2.2)",
                       offset=hex(offset), size=size)
            return
        value &= 0xFFFFFFFF
        if offset == VIRTIO_MMIO_QUEUE_NOTIFY:
            t.notify(value & 0xFFFF)  # bits 16+ are notification data (VIRTIO_F_NOTIFICATION_DATA, not offered)
        elif offset == VIRTIO_MMIO_INTERRUPT_ACK:
            t.ack_interrupt(value)
        elif offset == VIRTIO_MMIO_STATUS:
            t.write_status(value & 0xFF)
        elif offset == VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES:
            t.write_driver_features(self.driver_features_sel, value)
        elif offset == VIRTIO_MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif offset == VIRTIO_MMIO_QUEUE_NUM:
            queue = t.queue_writable(self.queue_sel, "QueueNum")
            if queue is not None:
                queue.size = value
        elif offset == VIRTIO_MMIO_QUEUE_READY:
            t.set_queue_ready(self.queue_sel, bool(value & 1))
        elif offset in _ADDRESS_REGISTERS:
            queue = t.queue_writable(self.queue_sel, "queue address")
            if queue is not None:
                attr, shift = _ADDRESS_REGISTERS[offset]
                old = getattr(queue, attr)
                setattr(queue, attr, (old & ~(0xFFFFFFFF << shift)) | (value << shift))
        elif offset == VIRTIO_MMIO_SHM_SEL:
            self.shm_sel = value
        elif offset == VIRTIO_MMIO_QUEUE_RESET:
            t._illegal("QueueReset without VIRTIO_F_RING_RESET (§4.2.2)")
        else:
            t._illegal("write to a read-only or reserved register (§4.2.2)",
                       offset=hex(offset))

    # -- device configuration space (§4.2.2.2 access widths) ----------------------

    def _read_config(self, offset, size):
        fmt = _CONFIG_FORMATS.get(size)
        if fmt is None:
            return 0
        return fmt.unpack(self.device.read_config(offset, size))[0]

    def _write_config(self, offset, size, value):
        fmt = _CONFIG_FORMATS.get(size)
        if fmt is None:
            return
        self.device.write_config(offset, fmt.pack(value & ((1 << (8 * size)) - 1)))

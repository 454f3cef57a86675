"""The virtio-pci transport, modern interface only (virtio 1.2 §4.1).

:class:`VirtioPciDevice` is a PCI function (:class:`~xvm.devices.pci.PciFunction`)
that adapts any :class:`~.device.VirtioDevice`, built on the same
:class:`~.transport.VirtioTransport` as virtio-mmio.  Layout:

* BAR 0 (32-bit memory, 16 KiB): common configuration at 0x0000, ISR status
  at 0x1000, device configuration at 0x2000, notifications at 0x3000 (queue
  ``i`` at ``0x3000 + 4 * i``: ``queue_notify_off = i``,
  ``notify_off_multiplier = 4``), each described by a virtio vendor
  capability (§4.1.4); a VIRTIO_PCI_CAP_PCI_CFG capability gives the
  alternative access through configuration space (§4.1.4.9).
* BAR 1: the MSI-X table and PBA, one vector per queue plus one
  (§4.1.4.3 ``config_msix_vector`` / ``queue_msix_vector`` choose them).

Every queue has its own notify address, so the machine registers one KVM
ioeventfd per queue with no datamatch (:meth:`bar_mapped`), and moves them
when the guest moves BAR 0.  Interrupts leave through the MSI-X vectors'
irqfds; while MSI-X is disabled the ISR status records them and, if the
machine gave the function an INTx GSI, INTA# is asserted (level-triggered,
re-asserted through a KVM resamplefd while the ISR is non-zero).
"""
import logging
import os
import struct
from dataclasses import dataclass

from ..pci.config import (
    PCI_CAP_ID_VNDR, PCI_COMMAND_INTX_DISABLE, PCI_CONFIG_SIZE, PCI_STATUS, PCI_STATUS_INTERRUPT,
    PciFunction,
)
from ..pci.msix import PCI_MSIX_FLAGS, Msix
from ..pci.persist import MsixState
from .device import InterruptKind
from .persist import TransportState
from .transport import VirtioTransport

log = logging.getLogger(__name__)

PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040  # §4.1.2.1: 0x1040 + virtio device ID
VIRTIO_PCI_SUBSYSTEM_ID = 0x1100  # §4.1.2.1: >= 0x40 for non-transitional devices
VIRTIO_PCI_REVISION = 1  # §4.1.2.1: non-transitional devices have revision >= 1
VIRTIO_MSI_NO_VECTOR = 0xFFFF
PCI_INTERRUPT_PIN_INTA = 1

# §4.1.4 Virtio Structure PCI Capabilities (names from <linux/virtio_pci.h>)
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

# §4.1.4.3 struct virtio_pci_common_cfg
VIRTIO_PCI_COMMON_DFSELECT = 0x00
VIRTIO_PCI_COMMON_DF = 0x04
VIRTIO_PCI_COMMON_GFSELECT = 0x08
VIRTIO_PCI_COMMON_GF = 0x0C
VIRTIO_PCI_COMMON_MSIX = 0x10
VIRTIO_PCI_COMMON_NUMQ = 0x12
VIRTIO_PCI_COMMON_STATUS = 0x14
VIRTIO_PCI_COMMON_CFGGENERATION = 0x15
VIRTIO_PCI_COMMON_Q_SELECT = 0x16
VIRTIO_PCI_COMMON_Q_SIZE = 0x18
VIRTIO_PCI_COMMON_Q_MSIX = 0x1A
VIRTIO_PCI_COMMON_Q_ENABLE = 0x1C
VIRTIO_PCI_COMMON_Q_NOFF = 0x1E
VIRTIO_PCI_COMMON_Q_DESCLO = 0x20
VIRTIO_PCI_COMMON_Q_DESCHI = 0x24
VIRTIO_PCI_COMMON_Q_AVAILLO = 0x28
VIRTIO_PCI_COMMON_Q_AVAILHI = 0x2C
VIRTIO_PCI_COMMON_Q_USEDLO = 0x30
VIRTIO_PCI_COMMON_Q_USEDHI = 0x34
VIRTIO_PCI_COMMON_Q_NDATA = 0x38
VIRTIO_PCI_COMMON_Q_RESET = 0x3A
COMMON_CFG_SIZE = 0x3C

# BAR 0 layout
COMMON_OFFSET = 0x0000
ISR_OFFSET = 0x1000
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET = 0x3000
REGION_SIZE = 0x1000
NOTIFY_OFF_MULTIPLIER = 4
NOTIFY_ACCESS_SIZE = 2  # Linux's vp_notify: a 16-bit write of the queue index
BAR0_SIZE = 0x4000
VIRTIO_BAR = 0
MSIX_BAR = 1

VIRTIO_ISR_QUEUE = 0x1  # §4.1.4.5
VIRTIO_ISR_CONFIG = 0x2

# §4.1.2: class codes as guests expect them (what other VMMs present).
_CLASS_CODES = {1: 0x020000, 2: 0x010000, 3: 0x078000}
PCI_CLASS_OTHERS = 0xFF0000

_ADDRESS_FIELDS = {
    VIRTIO_PCI_COMMON_Q_DESCLO: ("desc_table", 0),
    VIRTIO_PCI_COMMON_Q_DESCHI: ("desc_table", 32),
    VIRTIO_PCI_COMMON_Q_AVAILLO: ("avail_ring", 0),
    VIRTIO_PCI_COMMON_Q_AVAILHI: ("avail_ring", 32),
    VIRTIO_PCI_COMMON_Q_USEDLO: ("used_ring", 0),
    VIRTIO_PCI_COMMON_Q_USEDHI: ("used_ring", 32),
}
# §4.1.3.1: each field is accessed with its own width (64-bit ones as two dwords).
_COMMON_WIDTHS = {
    VIRTIO_PCI_COMMON_DFSELECT: 4, VIRTIO_PCI_COMMON_DF: 4, VIRTIO_PCI_COMMON_GFSELECT: 4,
    VIRTIO_PCI_COMMON_GF: 4, VIRTIO_PCI_COMMON_MSIX: 2, VIRTIO_PCI_COMMON_NUMQ: 2,
    VIRTIO_PCI_COMMON_STATUS: 1, VIRTIO_PCI_COMMON_CFGGENERATION: 1,
    VIRTIO_PCI_COMMON_Q_SELECT: 2, VIRTIO_PCI_COMMON_Q_SIZE: 2, VIRTIO_PCI_COMMON_Q_MSIX: 2,
    VIRTIO_PCI_COMMON_Q_ENABLE: 2, VIRTIO_PCI_COMMON_Q_NOFF: 2,
    VIRTIO_PCI_COMMON_Q_NDATA: 2, VIRTIO_PCI_COMMON_Q_RESET: 2,
    **{offset: 4 for offset in _ADDRESS_FIELDS},
}
_CONFIG_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
                   8: struct.Struct("<Q")}


@dataclass(frozen=True)
class VirtioPciState:
    """A virtio-pci function: transport, PCI configuration header and capabilities,
    MSI-X table, vector assignment and the driver's selectors."""

    transport: TransportState
    config: bytes  # configuration space bytes 0-255
    msix: MsixState
    config_vector: int
    queue_vectors: tuple
    selectors: tuple  # device_feature_select, driver_feature_select, queue_select

    def save(self):
        return {"transport": self.transport.save(), "config": self.config.hex(),
                "msix": self.msix.save(),
                "config_vector": self.config_vector, "queue_vectors": list(self.queue_vectors),
                "selectors": list(self.selectors)}

    @classmethod
    def restore(cls, data):
        return cls(TransportState.restore(data["transport"]), bytes.fromhex(data["config"]),
                   MsixState.restore(data["msix"]), data["config_vector"],
                   tuple(data["queue_vectors"]), tuple(data["selectors"]))


class _NoIntx:
    """A function without an INTx pin: with MSI-X off, the ISR is all there is."""

    def trigger(self):
        pass

    def close(self):
        pass


class _IntxLine:
    """INTA# of the function: an irqfd with a resamplefd on a level-triggered GSI.

    Asserted while MSI-X is off and the command register's Interrupt Disable is
    clear (PCI 3.0 §6.2.2); KVM deasserts it at the guest's EOI and signals the
    resamplefd, and the transport re-asserts it while the ISR is non-zero.
    """

    def __init__(self, function, gsi, irqfd, irqfd_remove):
        self.function = function
        self.gsi = gsi
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.resample_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._irqfd_remove = irqfd_remove
        try:
            irqfd(self.fd, gsi, resample_fd=self.resample_fd)
        except BaseException:
            self.close(registered=False)
            raise

    def trigger(self):
        if not self.function.command & PCI_COMMAND_INTX_DISABLE:
            os.eventfd_write(self.fd, 1)

    def close(self, registered=True):
        if self.fd < 0:
            return
        if registered and self._irqfd_remove is not None:
            try:
                self._irqfd_remove(self.fd, self.gsi)
            except OSError:
                pass
        os.close(self.fd)
        os.close(self.resample_fd)
        self.fd = self.resample_fd = -1


class PciTransport(VirtioTransport):
    """:class:`VirtioTransport` with MSI-X vectors per queue and for config changes."""

    def __init__(self, device, memory, msix, *, intx=None, name=None):
        intx = intx or _NoIntx()
        super().__init__(device, memory, intx, name=name,
                         resample_fd=getattr(intx, "resample_fd", None))
        self.msix = msix
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.queue_configs)

    def _message_vectors(self, kind, queue):
        if not self.msix.enabled:
            return None  # §4.1.4.5.1: with MSI-X disabled the ISR says why
        vectors = set()
        if kind & InterruptKind.CONFIG_CHANGE:
            vectors.add(self.config_vector)
        if kind & InterruptKind.USED_BUFFER:
            # §4.1.4.3 queue_msix_vector: a used buffer goes to its queue's vector.  With
            # no queue named (a device that does not say), every queue's: spurious
            # interrupts are benign.
            if queue is not None and 0 <= queue < len(self.queue_vectors):
                vectors.add(self.queue_vectors[queue])
            else:
                vectors.update(self.queue_vectors)
        vectors.discard(VIRTIO_MSI_NO_VECTOR)
        return vectors

    def _signal_vector(self, vector):
        self.msix.signal(vector)

    def read_isr(self):
        """§4.1.4.5: reading the ISR status returns and clears it."""
        with self._irq_lock:
            value, self.interrupt_status = self.interrupt_status, 0
        return value & (VIRTIO_ISR_QUEUE | VIRTIO_ISR_CONFIG)

    def reset(self):
        with self._lock:
            super().reset()
            # §4.1.4.3: vectors are part of the device state a reset clears.
            self.config_vector = VIRTIO_MSI_NO_VECTOR
            self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.queue_configs)


class _Bar0:
    def __init__(self, owner):
        self.owner = owner

    def read(self, offset, size):
        return self.owner.bar0_read(offset, size)

    def write(self, offset, size, value):
        self.owner.bar0_write(offset, size, value)


class VirtioPciDevice(PciFunction):
    """A virtio device as a PCI function.

    ``router`` is the machine's :class:`~xvm.devices.pci.GsiRouter`;
    ``irqfd(fd, gsi)`` registers an irqfd, ``irqfd_remove(fd, gsi)`` removes
    it; ``ioeventfd(fd, address, length, remove=False)`` (de)registers a KVM
    ioeventfd without datamatch.  With ``intx_gsi`` the function has an INTA#
    pin on that (level-triggered, possibly shared) GSI, used while MSI-X is
    disabled; ``irqfd`` must then accept ``resample_fd=``.
    """

    def __init__(self, device, memory, *, router, irqfd, ioeventfd, irqfd_remove=None, name=None,
                 intx_gsi=None):
        if not 0 < device.device_id < 0x40:
            raise ValueError(f"virtio device ID {device.device_id} has no PCI device ID")
        name = name or f"virtio-pci-{device.device_id}"
        super().__init__(
            vendor_id=PCI_VENDOR_ID_REDHAT_QUMRANET,
            device_id=VIRTIO_PCI_MODERN_DEVICE_BASE + device.device_id,
            class_code=_CLASS_CODES.get(device.device_id, PCI_CLASS_OTHERS),
            revision=VIRTIO_PCI_REVISION,
            subsystem_vendor_id=PCI_VENDOR_ID_REDHAT_QUMRANET,
            subsystem_id=VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin=PCI_INTERRUPT_PIN_INTA if intx_gsi is not None else 0,
            name=name,
        )
        self.device = device
        self._ioeventfd = ioeventfd
        self._irqfd_remove = irqfd_remove
        num_queues = len(device.queue_max_sizes)
        self.intx_gsi = intx_gsi
        self.msix = Msix(num_queues + 1, bar=MSIX_BAR, router=router, irqfd=irqfd, name=name)
        self.intx = None
        try:
            if intx_gsi is not None:
                self.intx = _IntxLine(self, intx_gsi, irqfd, irqfd_remove)
            self.transport = PciTransport(device, memory, self.msix, intx=self.intx, name=name)
        except BaseException:
            if self.intx is not None:
                self.intx.close()
            self.msix.close(irqfd_remove)
            raise
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self._notify_address = None

        self.add_memory_bar(VIRTIO_BAR, BAR0_SIZE, _Bar0(self))
        self.add_memory_bar(MSIX_BAR, self.msix.bar_size, self.msix.region)
        self._virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_CFG_SIZE)
        self._virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET,
                         num_queues * NOTIFY_OFF_MULTIPLIER,
                         extra=struct.pack("<I", NOTIFY_OFF_MULTIPLIER))
        self._virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1)
        self._virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, REGION_SIZE)
        # §4.1.4.9: bar, offset, length and pci_cfg_data are the driver's to write.
        self.pci_cfg_cap = self._virtio_cap(
            VIRTIO_PCI_CAP_PCI_CFG, 0, 0, extra=bytes(4),
            writable=b"\x00\x00\xff\x00\x00\x00" + b"\xff" * 12)
        cap_id, body, writable = self.msix.capability()
        self.msix_cap = self.add_capability(cap_id, body, writable=writable)

    def _virtio_cap(self, cfg_type, offset, length, *, extra=b"", writable=b""):
        # struct virtio_pci_cap (§4.1.4): cap_len, cfg_type, bar, id, padding[2], offset, length
        cap_len = 16 + len(extra)
        body = struct.pack("<BBBBxxII", cap_len, cfg_type, VIRTIO_BAR, 0, offset, length) + extra
        return self.add_capability(PCI_CAP_ID_VNDR, body, writable=writable)

    # -- the machine's side -----------------------------------------------------

    @property
    def num_queues(self):
        return len(self.transport.queue_configs)

    def notify_eventfds(self):
        return self.transport.notify_eventfds()

    def bar_mapped(self, index, address):
        """The host bridge mapped BAR ``index`` at ``address``: notifications follow it."""
        if index != VIRTIO_BAR:
            return
        base = address + NOTIFY_OFFSET
        for queue, fd in enumerate(self.transport.notify_eventfds()):
            self._ioeventfd(fd, base + queue * NOTIFY_OFF_MULTIPLIER, NOTIFY_ACCESS_SIZE)
        self._notify_address = base

    def bar_unmapped(self, index, address):
        if index != VIRTIO_BAR or self._notify_address is None:
            return
        base, self._notify_address = self._notify_address, None
        for queue, fd in enumerate(self.transport.notify_eventfds()):
            self._ioeventfd(fd, base + queue * NOTIFY_OFF_MULTIPLIER, NOTIFY_ACCESS_SIZE,
                            remove=True)

    def pause(self):
        self.transport.pause()

    def resume(self):
        self.transport.resume()

    def save(self):
        """Consistent while the data plane is quiesced (:meth:`pause`, vCPUs stopped)."""
        t = self.transport
        with self.lock:
            return VirtioPciState(
                t.save(), bytes(self.config[:PCI_CONFIG_SIZE]), self.msix.save(), t.config_vector,
                tuple(t.queue_vectors),
                (self.device_feature_select, self.driver_feature_select, self.queue_select))

    def restore(self, state, *, paused=False):
        """Load ``state`` (from a function of the same device type); BARs are
        remapped where the saved header puts them."""
        if len(state.queue_vectors) != self.num_queues or len(state.config) != PCI_CONFIG_SIZE:
            raise ValueError("virtio-pci state is for a different device")
        t = self.transport
        with self.lock:
            self.config[:PCI_CONFIG_SIZE] = state.config
            (self.device_feature_select, self.driver_feature_select,
             self.queue_select) = state.selectors
            self.msix.restore(state.msix)
            t.restore(state.transport, paused=True)
            t.config_vector = state.config_vector
            t.queue_vectors = list(state.queue_vectors)
            if not paused:
                t.resume()
            if self.on_mapping_change is not None:
                self.on_mapping_change(self)

    def close(self):
        self.transport.close()
        self.msix.close(self._irqfd_remove)
        if self.intx is not None:
            self.intx.close()

    # -- configuration space hooks ------------------------------------------------

    def config_written(self, offset, size, old):
        end = offset + size
        control = self.msix_cap + PCI_MSIX_FLAGS
        if offset < control + 2 and end > control:
            self.msix.control_written(self._get(control, 2))
        data = self.pci_cfg_cap + 16
        if offset < data + 4 and end > data:
            target = self._pci_cfg_target()
            if target is not None:
                bar_offset, length = target
                self.bar0_write(bar_offset, length, self._get(data, length))

    def read_config_register(self, offset, size):
        if offset <= PCI_STATUS < offset + size:
            # §6.2.3 Status bit 3: the function's INTx is asserted (the ISR is non-zero).
            status = self._get(PCI_STATUS, 2) & ~PCI_STATUS_INTERRUPT
            if self.intx is not None and self.transport.interrupt_status:
                status |= PCI_STATUS_INTERRUPT
            self._put(PCI_STATUS, 2, status)
        data = self.pci_cfg_cap + 16
        if offset < data + 4 and offset + size > data:
            target = self._pci_cfg_target()
            if target is not None:
                bar_offset, length = target
                self._put(data, 4, self.bar0_read(bar_offset, length))
        return super().read_config_register(offset, size)

    def _pci_cfg_target(self):
        """§4.1.4.9: the BAR access VIRTIO_PCI_CAP_PCI_CFG selects, if legal."""
        cap = self.pci_cfg_cap
        bar, offset, length = self.config[cap + 4], self._get(cap + 8, 4), self._get(cap + 12, 4)
        # §4.1.4.9.1: length 1, 2 or 4, offset aligned to it, inside the BAR.
        if bar != VIRTIO_BAR or length not in (1, 2, 4) or offset % length or offset + length > BAR0_SIZE:
            return None
        return offset, length

    # -- BAR 0 ------------------------------------------------------------------------

    def bar0_read(self, offset, size):
        region, offset = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFFSET:
            return self._common_read(offset, size)
        if region == ISR_OFFSET:
            return self.transport.read_isr() if offset == 0 else 0
        if region == DEVICE_OFFSET:
            fmt = _CONFIG_FORMATS.get(size)
            return fmt.unpack(self.device.read_config(offset, size))[0] if fmt else 0
        return 0  # notification area and gaps read as zero

    def bar0_write(self, offset, size, value):
        region, offset = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFFSET:
            self._common_write(offset, size, value)
        elif region == DEVICE_OFFSET:
            fmt = _CONFIG_FORMATS.get(size)
            if fmt:
                self.device.write_config(offset, fmt.pack(value & ((1 << (8 * size)) - 1)))
        elif region == NOTIFY_OFFSET:
            # An access the ioeventfd did not match (another width, or no ioeventfd).
            if offset % NOTIFY_OFF_MULTIPLIER == 0:
                self.transport.notify(offset // NOTIFY_OFF_MULTIPLIER)
            else:
                self.transport._illegal("notification at an address no queue owns (§4.1.4.4)",
                                        offset=hex(offset))

    def _width_ok(self, offset, size, write):
        width = _COMMON_WIDTHS.get(offset)
        if width == size:
            return True
        self.transport._illegal(
            f"common configuration {'write' if write else 'read'} with the wrong width (§4.1.3.1)",
            offset=hex(offset), size=size)
        return False

    def _common_read(self, offset, size):
        if size == 8 and offset in _ADDRESS_FIELDS and offset % 8 == 0:
            return self._common_read(offset, 4) | self._common_read(offset + 4, 4) << 32
        if not self._width_ok(offset, size, write=False):
            return 0
        t = self.transport
        queue = t.queue_config(self.queue_select)
        if offset == VIRTIO_PCI_COMMON_DFSELECT:
            return self.device_feature_select
        if offset == VIRTIO_PCI_COMMON_DF:
            return t.device_features_word(self.device_feature_select)
        if offset == VIRTIO_PCI_COMMON_GFSELECT:
            return self.driver_feature_select
        if offset == VIRTIO_PCI_COMMON_GF:
            if self.driver_feature_select > 1:
                return 0
            return t.driver_features >> (32 * self.driver_feature_select) & 0xFFFFFFFF
        if offset == VIRTIO_PCI_COMMON_MSIX:
            return t.config_vector
        if offset == VIRTIO_PCI_COMMON_NUMQ:
            return len(t.queue_configs)
        if offset == VIRTIO_PCI_COMMON_STATUS:
            return t.status.value
        if offset == VIRTIO_PCI_COMMON_CFGGENERATION:
            return t.config_generation & 0xFF
        if offset == VIRTIO_PCI_COMMON_Q_SELECT:
            return self.queue_select
        if queue is None:
            # §4.1.4.3.2: an unavailable queue reads queue_size 0; the rest reads 0 too.
            return VIRTIO_MSI_NO_VECTOR if offset == VIRTIO_PCI_COMMON_Q_MSIX else 0
        if offset == VIRTIO_PCI_COMMON_Q_SIZE:
            return queue.size or queue.max_size  # §4.1.4.3: reset value is the maximum
        if offset == VIRTIO_PCI_COMMON_Q_MSIX:
            return t.queue_vectors[self.queue_select]
        if offset == VIRTIO_PCI_COMMON_Q_ENABLE:
            return int(queue.ready)
        if offset == VIRTIO_PCI_COMMON_Q_NOFF:
            return self.queue_select
        if offset in _ADDRESS_FIELDS:
            attr, shift = _ADDRESS_FIELDS[offset]
            return getattr(queue, attr) >> shift & 0xFFFFFFFF
        return 0  # queue_notify_data, queue_reset: features not offered

    def _common_write(self, offset, size, value):
        if size == 8 and offset in _ADDRESS_FIELDS and offset % 8 == 0:
            self._common_write(offset, 4, value & 0xFFFFFFFF)
            self._common_write(offset + 4, 4, value >> 32)
            return
        if not self._width_ok(offset, size, write=True):
            return
        t = self.transport
        if offset == VIRTIO_PCI_COMMON_DFSELECT:
            self.device_feature_select = value
        elif offset == VIRTIO_PCI_COMMON_GFSELECT:
            self.driver_feature_select = value
        elif offset == VIRTIO_PCI_COMMON_GF:
            t.write_driver_features(self.driver_feature_select, value)
        elif offset == VIRTIO_PCI_COMMON_MSIX:
            t.config_vector = self._vector(value)
        elif offset == VIRTIO_PCI_COMMON_STATUS:
            t.write_status(value & 0xFF)
        elif offset == VIRTIO_PCI_COMMON_Q_SELECT:
            self.queue_select = value
        elif offset == VIRTIO_PCI_COMMON_Q_MSIX:
            if t.queue_config(self.queue_select) is None:
                t._illegal("queue_msix_vector for a queue that does not exist",
                           queue=self.queue_select)
            else:
                t.queue_vectors[self.queue_select] = self._vector(value)
        elif offset == VIRTIO_PCI_COMMON_Q_SIZE:
            queue = t.queue_writable(self.queue_select, "queue_size")
            if queue is not None:
                queue.size = value
        elif offset == VIRTIO_PCI_COMMON_Q_ENABLE:
            if value & 1:
                with t._lock:
                    queue = t.queue_config(self.queue_select)
                    if queue is not None and not queue.ready and not queue.size:
                        queue.size = queue.max_size  # the driver kept the default size
                t.set_queue_ready(self.queue_select, True)
            else:
                # §4.1.4.3.2 "The driver MUST NOT write a 0 to queue_enable."
                t._illegal("queue_enable written with 0 (§4.1.4.3.2)", queue=self.queue_select)
        elif offset in _ADDRESS_FIELDS:
            queue = t.queue_writable(self.queue_select, "queue address")
            if queue is not None:
                attr, shift = _ADDRESS_FIELDS[offset]
                old = getattr(queue, attr)
                setattr(queue, attr, (old & ~(0xFFFFFFFF << shift)) | (value << shift))
        elif offset == VIRTIO_PCI_COMMON_Q_RESET:
            t._illegal("queue_reset without VIRTIO_F_RING_RESET (§4.1.4.3.2)")
        else:
            t._illegal("write to a read-only common configuration field (§4.1.4.3)",
                       offset=hex(offset))

    def _vector(self, value):
        """§4.1.5.1.2: a vector the function does not have maps to NO_VECTOR, which
        the driver reads back to learn the mapping failed."""
        return value if value < len(self.msix.vectors) else VIRTIO_MSI_NO_VECTOR

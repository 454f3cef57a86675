"""MSI-X (PCI Local Bus 3.0 §6.8.2): capability, vector table, pending bits.

:class:`Msix` is the capability of one function plus its table and PBA,
which live in a memory BAR (:attr:`Msix.region` is the bus device for that
BAR: table at offset 0, PBA after it).  Each vector is delivered through an
eventfd registered by the machine with KVM_IRQFD on its own GSI; the GSI is
routed (KVM_SET_GSI_ROUTING, through a :class:`~.irq.GsiRouter`) to the
message the guest programmed.  Masking is done here: a masked vector's
interrupt only sets its pending bit and is sent when the vector is unmasked
(§6.8.2.9).
"""
import logging
import os
import struct
import threading

from .config import PCI_CAP_ID_MSIX

log = logging.getLogger(__name__)

# §6.8.2.3 Message Control
PCI_MSIX_FLAGS = 2  # offset in the capability
PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_TABLE = 4
PCI_MSIX_PBA = 8
CAPABILITY_SIZE = 12
# §6.8.2.6-9 table entry
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_LOWER_ADDR = 0
PCI_MSIX_ENTRY_UPPER_ADDR = 4
PCI_MSIX_ENTRY_DATA = 8
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
PCI_MSIX_ENTRY_CTRL_MASKBIT = 1

# x86 MSI messages go to the local APICs' window (Intel SDM vol. 3 §11.11.1).
MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_ADDRESS_MASK = 0xFFF0_0000


class MsixVector:
    __slots__ = ("address", "data", "masked", "pending", "gsi", "fd")

    def __init__(self, gsi, fd):
        self.address = 0
        self.data = 0
        self.masked = True  # §6.8.2.9: Mask Bit resets to 1
        self.pending = False
        self.gsi = gsi
        self.fd = fd


class _TableRegion:
    """The BAR holding the table and the PBA."""

    def __init__(self, msix):
        self.msix = msix

    def read(self, offset, size):
        return self.msix.read(offset, size)

    def write(self, offset, size, value):
        self.msix.write(offset, size, value)


class Msix:
    """``count`` vectors; ``router`` routes GSIs (allocating one per vector),
    ``irqfd(fd, gsi)`` registers an eventfd with KVM_IRQFD."""

    def __init__(self, count, *, bar, router, irqfd, name="msix"):
        if not 1 <= count <= 2048:
            raise ValueError("MSI-X supports 1-2048 vectors")
        self.name = name
        self.bar = bar
        self.router = router
        self.table_size = count * PCI_MSIX_ENTRY_SIZE
        self.pba_offset = (self.table_size + 7) & ~7
        self.pba_size = ((count + 63) // 64) * 8
        self.bar_size = max(4096, 1 << (self.pba_offset + self.pba_size - 1).bit_length())
        self.region = _TableRegion(self)
        self.enabled = False
        self.function_masked = False
        self.illegal_access_count = 0
        self._lock = threading.Lock()
        self.vectors = []
        for _ in range(count):
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            vector = MsixVector(router.allocate(), fd)
            self.vectors.append(vector)
            irqfd(fd, vector.gsi)
        self._installed = {}  # gsi -> (address, data) routed now

    def capability(self):
        """The capability body after ID/next, and its write mask."""
        body = struct.pack("<HII", len(self.vectors) - 1, 0 | self.bar,
                           self.pba_offset | self.bar)
        writable = struct.pack("<HII", PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL, 0, 0)
        return PCI_CAP_ID_MSIX, body, writable

    def control_written(self, control):
        """The guest wrote Message Control (the capability's config bytes 2-3)."""
        with self._lock:
            self.enabled = bool(control & PCI_MSIX_FLAGS_ENABLE)
            self.function_masked = bool(control & PCI_MSIX_FLAGS_MASKALL)
            self._sync_routes()
            self._flush_pending()

    # -- table and PBA ------------------------------------------------------------

    def read(self, offset, size):
        # §6.8.2: table and PBA are accessed as aligned dwords (or qwords).
        if size not in (4, 8) or offset % size:
            self.illegal_access_count += 1
            return (1 << (8 * size)) - 1 if size in (1, 2, 4, 8) else 0
        if size == 8:
            return self.read(offset, 4) | self.read(offset + 4, 4) << 32
        with self._lock:
            if offset < self.table_size:
                vector = self.vectors[offset // PCI_MSIX_ENTRY_SIZE]
                field = offset % PCI_MSIX_ENTRY_SIZE
                if field == PCI_MSIX_ENTRY_LOWER_ADDR:
                    return vector.address & 0xFFFF_FFFF
                if field == PCI_MSIX_ENTRY_UPPER_ADDR:
                    return vector.address >> 32
                if field == PCI_MSIX_ENTRY_DATA:
                    return vector.data
                return int(vector.masked)
            if self.pba_offset <= offset < self.pba_offset + self.pba_size:
                first = (offset - self.pba_offset) * 8
                bits = 0
                for i, vector in enumerate(self.vectors[first:first + 32]):
                    bits |= vector.pending << i
                return bits
        return 0

    def write(self, offset, size, value):
        if size not in (4, 8) or offset % size:
            self.illegal_access_count += 1
            return
        if size == 8:
            self.write(offset, 4, value & 0xFFFF_FFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        if offset >= self.table_size:
            return  # the PBA is read-only (§6.8.2.10); the rest is reserved
        with self._lock:
            vector = self.vectors[offset // PCI_MSIX_ENTRY_SIZE]
            field = offset % PCI_MSIX_ENTRY_SIZE
            if field == PCI_MSIX_ENTRY_LOWER_ADDR:
                # §6.8.2.6: Message Address bits 1:0 are reserved (dword aligned).
                vector.address = (vector.address & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFC)
            elif field == PCI_MSIX_ENTRY_UPPER_ADDR:
                vector.address = (vector.address & 0xFFFF_FFFF) | (value << 32)
            elif field == PCI_MSIX_ENTRY_DATA:
                vector.data = value
                if not vector.masked:  # reprogrammed while live (undefined, §6.8.2.9): follow it
                    self._sync_route(vector)
            else:
                vector.masked = bool(value & PCI_MSIX_ENTRY_CTRL_MASKBIT)
                if not vector.masked:
                    self._sync_route(vector)
                self._flush_pending()

    # -- routing ----------------------------------------------------------------

    def _sync_routes(self):
        if not self.enabled:
            return
        for vector in self.vectors:
            if not vector.masked:
                self._sync_route(vector)

    def _sync_route(self, vector):
        """Route the vector's GSI to its message; called when it becomes usable
        (unmasked while enabled), so the guest's programming order does not matter."""
        if not self.enabled:
            return
        message = (vector.address, vector.data)
        if self._installed.get(vector.gsi) == message:
            return
        if vector.address & MSI_ADDRESS_MASK != MSI_ADDRESS_BASE or vector.address >> 32:
            # Not a message an x86 LAPIC accepts: deliver nothing.
            self.illegal_access_count += 1
            log.info("%s: MSI-X vector with address %#x ignored", self.name, vector.address)
            self._installed.pop(vector.gsi, None)
            self.router.clear(vector.gsi)
            return
        self._installed[vector.gsi] = message
        self.router.set_msi(vector.gsi, vector.address, vector.data)

    # -- delivery (device worker) ---------------------------------------------------

    def signal(self, index):
        """Send vector ``index``, or mark it pending while masked.  False if MSI-X
        is disabled (the caller falls back to INTx) or ``index`` is no vector."""
        if not 0 <= index < len(self.vectors):
            return False
        with self._lock:
            if not self.enabled:
                return False
            vector = self.vectors[index]
            if self.function_masked or vector.masked or vector.gsi not in self._installed:
                vector.pending = True
                return True
        os.eventfd_write(vector.fd, 1)
        return True

    def _flush_pending(self):
        if not self.enabled or self.function_masked:
            return
        for vector in self.vectors:
            if vector.pending and not vector.masked and vector.gsi in self._installed:
                vector.pending = False
                os.eventfd_write(vector.fd, 1)

    def save(self):
        """A :class:`~.persist.MsixState`."""
        from .persist import MsixState, MsixVectorState
        with self._lock:
            return MsixState(self.enabled, self.function_masked,
                             tuple(MsixVectorState(v.address, v.data, v.masked, v.pending)
                                   for v in self.vectors))

    def restore(self, state):
        if isinstance(state, tuple):  # the older (enabled, masked, vectors) form
            from .persist import MsixState
            state = MsixState.restore(state)
        if len(state.vectors) != len(self.vectors):
            raise ValueError(f"MSI-X state has {len(state.vectors)} vectors, the function {len(self.vectors)}")
        with self._lock:
            for vector, saved in zip(self.vectors, state.vectors):
                vector.address, vector.data = saved.address, saved.data
                vector.masked, vector.pending = bool(saved.masked), bool(saved.pending)
            self.enabled, self.function_masked = bool(state.enabled), bool(state.function_masked)
            self._sync_routes()
            self._flush_pending()

    def reset(self):
        with self._lock:
            self.enabled = self.function_masked = False
            for vector in self.vectors:
                vector.address = vector.data = 0
                vector.masked, vector.pending = True, False
            for gsi in list(self._installed):
                self.router.clear(gsi)
            self._installed.clear()

    def close(self, irqfd_remove=None):
        for vector in self.vectors:
            if vector.fd >= 0:
                if irqfd_remove is not None:
                    try:
                        irqfd_remove(vector.fd, vector.gsi)
                    except OSError:
                        pass
                os.close(vector.fd)
                vector.fd = -1
            self.router.release(vector.gsi)

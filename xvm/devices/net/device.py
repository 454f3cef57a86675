"""virtio-net (virtio 1.2 §5.1): features, configuration space, rx and tx.

``VirtioNet(mac, backend=tap)`` is a
:class:`~xvm.devices.virtio.device.VirtioDevice` with a receive queue (0) and
a transmit queue (1), both served on the transport's worker thread: a tx
notification writes the guest's frames to the TAP; the TAP becoming readable
fills the guest's rx buffers.  When the guest has no rx buffer left the
device stops polling the TAP (the frame read stays pending) until an rx
notification says buffers were added — the host kernel queues or drops,
the VMM never spins.  A malformed tx chain drops that one packet
(``tx_dropped_count``); a corrupt ring puts the device in DEVICE_NEEDS_RESET.
Both queues are served in the virtio core's bounded turns (:mod:`..virtio.batch`):
tx one chain at a time (:meth:`VirtioNet.process_chain`), rx one frame per
unit of the turn's budget.
"""
import logging
import select
import struct

from ..virtio.device import (
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, FeatureError,
    VirtioDevice, bit, has_feature,
)
from ..virtio import native as _native_loader
from ..virtio.errors import ChainError, QueueError
from .backend.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN
from .errors import NetConfigError, TapError
from .metrics import NetMetrics
from .persist import NetState
from .request import (
    MAX_PACKET, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_SIZE, TxError, parse_tx,
    tun_offloads,
)

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1  # §5 Device Types
RX_QUEUE = 0  # §5.1.2 receiveq1
TX_QUEUE = 1  # §5.1.2 transmitq1
VIRTIO_NET_S_LINK_UP = 1  # §5.1.4 status
DEFAULT_QUEUE_SIZE = 256
DEFAULT_MTU = 1500
MIN_MTU = 68  # §5.1.4.1 "The device MUST NOT set mtu below 68"
MAX_MTU = 65535

# §5.1.4 struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
_CONFIG = struct.Struct("<6sHHH")
_U16 = struct.Struct("<H")
_RX_DONE = 0  # xvm_net_rx delivered the frame (xvm/devices/virtio/_build_native.py)

# §5.1.3.1 Feature bit requirements: feature -> features it needs (any of).
_REQUIRES = {
    VIRTIO_NET_F_GUEST_TSO4: (VIRTIO_NET_F_GUEST_CSUM,),
    VIRTIO_NET_F_GUEST_TSO6: (VIRTIO_NET_F_GUEST_CSUM,),
    VIRTIO_NET_F_GUEST_ECN: (VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6),
    VIRTIO_NET_F_HOST_TSO4: (VIRTIO_NET_F_CSUM,),
    VIRTIO_NET_F_HOST_TSO6: (VIRTIO_NET_F_CSUM,),
    VIRTIO_NET_F_HOST_ECN: (VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6),
}


def parse_mac(mac):
    """``"52:54:00:12:34:56"`` (or 6 bytes) -> 6 bytes; NetConfigError otherwise."""
    if isinstance(mac, (bytes, bytearray)) and len(mac) == 6:
        return bytes(mac)
    if isinstance(mac, str):
        parts = mac.split(":")
        if len(parts) == 6 and all(len(p) == 2 for p in parts):
            try:
                return bytes(int(p, 16) for p in parts)
            except ValueError:
                pass
    raise NetConfigError(f"MAC address {mac!r} is not six colon-separated hex bytes")


def format_mac(raw):
    return ":".join(f"{b:02x}" for b in raw)


class VirtioNet(VirtioDevice):
    """A virtio-net device with one rx/tx queue pair over ``backend`` (a
    :class:`~xvm.devices.net.backend.tap.Tap` or anything with its methods).

    ``mac`` is the NIC's address; ``mtu`` is offered with VIRTIO_NET_F_MTU.
    The device owns ``backend`` and closes it in :meth:`close`.
    """

    device_id = VIRTIO_ID_NET

    def __init__(self, mac, *, backend, mtu=DEFAULT_MTU, queue_size=DEFAULT_QUEUE_SIZE,
                 bridge=None):
        super().__init__()
        if queue_size < 2 or queue_size & (queue_size - 1) or queue_size > 32768:
            raise NetConfigError(f"virtio-net queue size {queue_size} is not a power of 2 "
                                 "in 2..32768")
        if not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
            raise NetConfigError(f"MTU {mtu!r} is not an integer from {MIN_MTU} to {MAX_MTU}")
        self.mac = parse_mac(mac)
        self.mtu = mtu
        self.bridge = bridge
        self.backend = backend
        self.queue_max_sizes = (queue_size, queue_size)
        self.metrics = NetMetrics()
        self._rxbuf = bytearray(MAX_PACKET)
        self._rxview = memoryview(self._rxbuf)
        self._pending = 0  # length of a frame read from the TAP, not yet delivered
        self._held = []  # rx chains popped but not used (a frame did not fit yet)
        self._c_rx = None  # (queue, arguments of the C receive path or None)
        self._c_tx = None  # (queue, the C transmit handler or None)
        # The TAP sits in an epoll of its own, given to the worker: removing it
        # from there is how rx stops polling without touching the worker.
        self._poll = select.epoll()
        self._polling = False
        self._set_polling(True)

    # -- features and configuration (§5.1.3, §5.1.4) -----------------------------

    @property
    def device_features(self):
        features = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC)
                    | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_NET_F_MAC)
                    | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU)
                    | bit(VIRTIO_NET_F_MRG_RXBUF)
                    # Frames the guest leaves unchecksummed / unsegmented go to the
                    # TAP with their vnet header; the host kernel finishes them.
                    | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4)
                    | bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_HOST_ECN))
        # What the guest may receive unfinished is what this host's TAP can hand out.
        offloads = getattr(self.backend, "offloads", 0)
        if offloads & TUN_F_CSUM:
            features |= bit(VIRTIO_NET_F_GUEST_CSUM)
            if offloads & TUN_F_TSO4:
                features |= bit(VIRTIO_NET_F_GUEST_TSO4)
            if offloads & TUN_F_TSO6:
                features |= bit(VIRTIO_NET_F_GUEST_TSO6)
            if offloads & TUN_F_TSO_ECN and offloads & (TUN_F_TSO4 | TUN_F_TSO6):
                features |= bit(VIRTIO_NET_F_GUEST_ECN)
        return features

    def ack_features(self, features):
        super().ack_features(features)
        for feature, needs in _REQUIRES.items():
            if has_feature(features, feature) and not any(has_feature(features, n)
                                                          for n in needs):
                self.acked_features = 0
                raise FeatureError("feature accepted without the feature it requires "
                                   "(§5.1.3.1)", feature=feature, requires=needs)

    def config_space(self):
        return _CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1, self.mtu)

    @property
    def mac_address(self):
        return format_mac(self.mac)

    # -- life cycle ----------------------------------------------------------------

    def activate(self, memory, queues, interrupt):
        # §5.1.2: receiveq1 and transmitq1 are both needed.
        if len(queues) < 2 or queues[RX_QUEUE] is None or queues[TX_QUEUE] is None:
            raise QueueError("virtio-net activated without receiveq1 and transmitq1 (§5.1.2)")
        super().activate(memory, queues, interrupt)
        self._held = []
        self._c_rx = self._c_tx = None
        self._set_polling(True)
        if hasattr(self.backend, "set_offload"):
            self.backend.set_offload(tun_offloads(self.acked_features,
                                                  getattr(self.backend, "offloads", 0)))

    def disable_queue(self, index):
        super().disable_queue(index)
        self._c_rx = self._c_tx = None
        if index == RX_QUEUE:
            self._held = []
            self._set_polling(False)  # nowhere to put frames: leave them to the TAP

    def mark_broken(self):
        super().mark_broken()
        self._set_polling(False)

    def reset(self):
        super().reset()
        self._held = []
        self._c_rx = self._c_tx = None
        self._pending = 0
        self._set_polling(True)

    def close(self):
        # Drop every view of guest memory (queues, held chains) so the machine
        # can unmap it.
        self.queues = ()
        self.memory = None
        self._held = []
        self._c_rx = self._c_tx = None
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        self.backend.close()

    def event_sources(self):
        return ((self._poll.fileno(), RX_QUEUE, self._on_backend_readable),)

    def _set_polling(self, on):
        if on == self._polling or self._poll is None:
            return
        fd = self.backend.fileno()
        if on:
            self._poll.register(fd, select.EPOLLIN)
        else:
            self._poll.unregister(fd)
        self._polling = on

    # -- the data plane (worker thread) ----------------------------------------------

    def process_queue(self, index, batch):
        if index == TX_QUEUE:
            self.metrics.tx_notify_count += 1
            queue = batch.queue
            if self._c_tx is None or self._c_tx[0] is not queue:
                self._c_tx = (queue, self._c_tx_handler(queue))
            if self._c_tx[1] is None:
                batch.serve_chains(self._send)
            else:
                batch.serve_heads(self._c_tx[1])
        elif index == RX_QUEUE:
            # The guest added rx buffers: deliver what waits and poll the TAP again.
            self.metrics.rx_notify_count += 1
            self._receive(batch)

    def _on_backend_readable(self, index, batch):
        self.metrics.tap_readable_count += 1
        self._receive(batch)

    def invalid_chain(self, index, error):
        super().invalid_chain(index, error)
        if index == TX_QUEUE:
            # A malformed chain drops its packet alone (§2.7.8).
            self.metrics.tx_dropped_count += 1

    # -- transmit (§5.1.6.2) ------------------------------------------------------

    def process_chain(self, index, chain):
        return self._send(chain)

    def _c_tx_handler(self, queue):
        """``send(head)`` doing :meth:`_send` in C (``xvm_net_tx``), a malformed
        packet or a failed write through :meth:`_send`; None without the C walker
        or without a backend fd that takes one frame per write (``frame_fd``)."""
        args = queue.native_args()
        fd = getattr(self.backend, "frame_fd", None)
        if args is None or fd is None:
            return None
        lib, regions, nregions, desc, size, indirect, scratch, max_scratch = args
        tx = lib.xvm_net_tx
        metrics = self.metrics
        features = self.acked_features & 0xFFFFFFFF

        def send(head):
            length = tx(regions, nregions, desc, size, head, indirect, scratch, max_scratch,
                        features, fd)
            if length < 0:
                return self._send(queue.walk(head))
            metrics.tx_packets += 1
            metrics.tx_bytes += length
            return 0
        return send

    def _send(self, chain):
        """Send one tx chain's frame; returns the used length, always 0: the device
        writes nothing into a tx buffer (§5.1.6.2)."""
        try:
            frame_len = parse_tx(chain, self.acked_features)
        except TxError as e:
            self.metrics.tx_dropped_count += 1
            self.guest_error(TX_QUEUE, e.reason, f"tx packet {chain.head} dropped")
            return 0
        try:
            self.backend.writev(chain.readable_views())
        except OSError as e:
            # EINVAL: the host kernel refused the header; EIO: the TAP is down.
            log.debug("virtio-net: TAP write failed: %s", e)
            self.metrics.tap_write_error_count += 1
            self.metrics.tx_dropped_count += 1
            return 0
        self.metrics.tx_packets += 1
        self.metrics.tx_bytes += frame_len
        return 0

    # -- receive (§5.1.6.3, §5.1.6.4) -----------------------------------------------

    def _receive(self, batch):
        """Deliver frames from the TAP, one per unit of ``batch``'s budget."""
        queue = batch.queue
        while batch.take():
            if not self._pending:
                length = self.backend.read_into(self._rxbuf)
                if not length:
                    self._set_polling(True)
                    return
                self._pending = length
            if not self._deliver_fast(queue, self._pending):
                # No rx buffer: stop polling the TAP until the guest adds some.
                if self._polling:
                    self.metrics.rx_starved_count += 1
                self._set_polling(False)
                # §2.7.10: buffers added since we last looked must not be missed.
                if queue.enable_notification():
                    continue
                return
            self._pending = 0
        self._set_polling(True)

    def _deliver_fast(self, queue, length):
        """:meth:`_deliver` in C (``xvm_net_rx``) when the queue has the C walker and
        no chain is held; anything unusual (a malformed or too small buffer, a
        corrupt ring) goes the Python way."""
        if self._held or queue.memory.device_dirty is not None:
            # a live migration tracks device writes where chains complete (Queue.add_used)
            return self._deliver(queue, length)
        if self._c_rx is None or self._c_rx[0] is not queue:
            self._c_rx = (queue, self._c_rx_args(queue))
        args = self._c_rx[1]
        if args is None:
            return self._deliver(queue, length)
        rx, regions, nregions, desc, size, indirect, avail, used, event_idx, frame, \
            scratch, max_scratch, consumed = args
        rc = rx(regions, nregions, desc, size, indirect, avail, used, queue.next_avail,
                queue.next_used, event_idx, self.has_acked(VIRTIO_NET_F_MRG_RXBUF),
                frame, length, scratch, max_scratch, consumed)
        if rc == _RX_DONE:
            queue.advance(consumed[0])
            self.metrics.rx_packets += 1
            self.metrics.rx_bytes += length - VIRTIO_NET_HDR_SIZE
            return True
        # Too few buffers (the reference then holds the chains it popped, so the
        # driver's next notification comes on time), or anything unusual.
        return self._deliver(queue, length)

    def _c_rx_args(self, queue):
        args = queue.native_args()
        if args is None:
            return None
        lib, regions, nregions, desc, size, indirect, scratch, max_scratch = args
        ffi = _native_loader.load().ffi
        avail, used = queue.native_rings()
        return (lib.xvm_net_rx, regions, nregions, desc, size, indirect, avail, used,
                1 if queue.event_idx else 0, ffi.from_buffer(self._rxbuf), scratch,
                max_scratch, ffi.new("uint32_t *"))

    def _next_rx_chain(self, queue):
        """The next usable rx chain (held ones first), or None.  Unusable
        chains are returned with used length 0 and counted."""
        while True:
            if self._held:
                return self._held.pop(0)
            try:
                chain = queue.pop()
            except ChainError as e:
                if e.head is None:
                    raise
                self.invalid_chain(RX_QUEUE, e)
                queue.add_used(e.head, 0)
                continue
            if chain is None:
                return None
            # §5.1.6.3: receive buffers are device-writable only, the first one
            # large enough for the header (§5.1.6.3.1).
            if chain.readable or chain.writable_len < VIRTIO_NET_HDR_SIZE:
                self.invalid_chain(RX_QUEUE, f"rx buffer {chain.head} is device-readable or "
                                   "shorter than the virtio-net header (§5.1.6.3)")
                queue.add_used(chain.head, 0)
                continue
            return chain

    def _deliver(self, queue, length):
        """Put the frame in ``_rxbuf[:length]`` (vnet header first) into rx
        buffers; False if the guest has too few."""
        mergeable = self.has_acked(VIRTIO_NET_F_MRG_RXBUF)
        chains = []
        room = 0
        while room < length:
            chain = self._next_rx_chain(queue)
            if chain is None:
                self._held[:0] = chains
                return False
            if not mergeable and chain.writable_len < length:
                # §5.1.6.3.1: without MRG_RXBUF each buffer must hold a whole
                # packet; this one cannot: drop the frame, keep the buffer.
                self._held.insert(0, chain)
                self.metrics.rx_dropped_count += 1
                return True
            chains.append(chain)
            room += chain.writable_len
        # §5.1.6.4 num_buffers: how many descriptor chains the packet spans
        # (1 without VIRTIO_NET_F_MRG_RXBUF), set in the frame's header, then the
        # frame copied in order, buffer after buffer: a guest that publishes one buffer
        # twice (aliased; the spec does not say what it gets) finds the later pieces
        # over the earlier ones, num_buffers included.  xvm_net_rx writes in this order.
        _U16.pack_into(self._rxbuf, 10, len(chains))
        data = self._rxview
        offset = 0
        memory = self.memory
        for chain in chains:
            used = 0
            for gpa, piece in chain.writable:
                take = min(piece, length - offset)
                if take <= 0:
                    break
                memory.view(gpa, take)[:] = data[offset:offset + take]
                offset += take
                used += take
            queue.add_used(chain.head, used)
        self.metrics.rx_packets += 1
        self.metrics.rx_bytes += length - VIRTIO_NET_HDR_SIZE
        return True

    # -- state -------------------------------------------------------------------------

    def save(self):
        return NetState(format_mac(self.mac), self.mtu, self.bridge, self.acked_features,
                        self.queue_max_sizes[0])

    def restore(self, state):
        """Load ``state`` into this device, built from the same configuration (same MAC,
        MTU and queue size; the TAP may be another one)."""
        if (format_mac(self.mac), self.mtu, self.queue_max_sizes[0]) != (state.mac, state.mtu,
                                                                          state.queue_size):
            raise NetConfigError(f"NIC {format_mac(self.mac)} is configured unlike the snapshot's "
                                 f"{state.mac} (MAC, MTU, queue size)")
        self.acked_features = state.acked_features


__all__ = ["VirtioNet", "VIRTIO_ID_NET", "parse_mac", "format_mac", "TapError"]

"""virtio-net (virtio 1.2 §5.1): features, configuration space, rx, tx and controlq.

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

Multiqueue (``backends=``, one per queue pair: the queues of one IFF_MULTI_QUEUE
TAP) adds VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ: pairs rx0, tx0, rx1, tx1, ...
and the control queue last (§5.1.2).  Each pair has its own TAP queue, its own
receive state and C paths, and its TAP fd is an event source of its own; all
pairs are served by the transport's one worker thread (see :class:`_Pair`).
Until the driver sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET only the first pair is
used, and the TAP queues of the pairs not enabled are detached (TUNSETQUEUE),
so the host kernel steers no frame to them (§5.1.6.5.5).  Every control command
gets VIRTIO_NET_OK or VIRTIO_NET_ERR; a malformed one fails alone.
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
    MAX_PACKET, VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ, VIRTIO_NET_OK, CtrlError, parse_ctrl,
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
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
CTRL_QUEUE_SIZE = 64  # controlq: one command in flight at a time is what drivers do
MAX_QUEUE_PAIRS = 16  # §5.1.4 allows 0x8000; one TAP queue (fd) per pair is the cost
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
    VIRTIO_NET_F_MQ: (VIRTIO_NET_F_CTRL_VQ,),
}

# §5.1.6.5: control class -> the feature without which the driver must not use it.
_CTRL_CLASS_FEATURE = {
    VIRTIO_NET_CTRL_RX: VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_CTRL_MAC: VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_CTRL_VLAN: VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_CTRL_ANNOUNCE: VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS: VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
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


class _Pair:
    """The host side of one receiveq/transmitq pair: its backend (one TAP queue),
    the frame read from it and not yet delivered, the rx chains held for it, the
    C paths bound to its queues, and an epoll of its own holding the backend while
    rx polls it (given to the worker as the pair's event source)."""

    __slots__ = ("index", "rx_index", "tx_index", "backend", "rxbuf", "rxview", "pending",
                 "held", "c_rx", "c_tx", "poll", "polling", "attached")

    def __init__(self, index, backend):
        self.index = index
        self.rx_index = 2 * index  # §5.1.2 receiveqN is 2(N-1), transmitqN 2(N-1)+1
        self.tx_index = 2 * index + 1
        self.backend = backend
        self.rxbuf = bytearray(MAX_PACKET)
        self.rxview = memoryview(self.rxbuf)
        self.pending = 0  # length of a frame read from the TAP, not yet delivered
        self.held = []  # rx chains popped but not used (a frame did not fit yet)
        self.c_rx = None  # (queue, arguments of the C receive path or None)
        self.c_tx = None  # (queue, the C transmit handler or None)
        self.poll = select.epoll()
        self.polling = False
        self.attached = True  # the TAP queue takes frames (TUNSETQUEUE)

    def set_polling(self, on):
        if on == self.polling or self.poll is None:
            return
        fd = self.backend.fileno()
        if on:
            self.poll.register(fd, select.EPOLLIN)
        else:
            self.poll.unregister(fd)
        self.polling = on

    def set_attached(self, on):
        """Let the host kernel steer frames to this pair's TAP queue, or not
        (a backend without queues, ``set_queue_attached``, always takes them)."""
        if on == self.attached:
            return
        attach = getattr(self.backend, "set_queue_attached", None)
        if attach is not None:
            attach(on)
        self.attached = on

    def forget(self):
        """Drop what refers to the queues (views of guest RAM): held chains, C paths."""
        self.held = []
        self.c_rx = self.c_tx = None


class VirtioNet(VirtioDevice):
    """A virtio-net device over ``backend`` (a
    :class:`~xvm.devices.net.backend.tap.Tap` or anything with its methods), or,
    with multiqueue, over ``backends``: one per queue pair (the queues of one
    multi-queue TAP, :meth:`Tap.open_queues`).

    ``mac`` is the NIC's address; ``mtu`` is offered with VIRTIO_NET_F_MTU.  With
    one backend the device has receiveq1 and transmitq1 and nothing else; with N
    it offers VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ, ``max_virtqueue_pairs`` N
    and the queues rx0, tx0, rx1, tx1, ..., controlq (§5.1.2).  The device owns
    its backends and closes them in :meth:`close`.
    """

    device_id = VIRTIO_ID_NET

    def __init__(self, mac, *, backend=None, backends=None, mtu=DEFAULT_MTU,
                 queue_size=DEFAULT_QUEUE_SIZE, bridge=None):
        super().__init__()
        if (backend is None) == (backends is None):
            raise NetConfigError("a virtio-net device needs backend= (one queue pair) or "
                                 "backends= (one per queue pair), not both")
        backends = (backend,) if backends is None else tuple(backends)
        if not 1 <= len(backends) <= MAX_QUEUE_PAIRS:
            raise NetConfigError(f"virtio-net with {len(backends)} queue pairs: from 1 to "
                                 f"{MAX_QUEUE_PAIRS} are supported")
        if queue_size < 2 or queue_size & (queue_size - 1) or queue_size > 32768:
            raise NetConfigError(f"virtio-net queue size {queue_size} is not a power of 2 "
                                 "in 2..32768")
        if not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
            raise NetConfigError(f"MTU {mtu!r} is not an integer from {MIN_MTU} to {MAX_MTU}")
        self.mac = parse_mac(mac)
        self.mtu = mtu
        self.bridge = bridge
        self.backends = backends
        self.backend = backends[0]
        self.max_pairs = len(backends)
        self.queue_size = queue_size
        if self.max_pairs == 1:
            self.queue_max_sizes = (queue_size, queue_size)
        else:
            self.queue_max_sizes = (queue_size,) * (2 * self.max_pairs) + (CTRL_QUEUE_SIZE,)
        self.metrics = NetMetrics()
        self.active_pairs = 1  # §5.1.6.5.5: receiveq1/transmitq1 only, until VQ_PAIRS_SET
        self._usable_pairs = 1  # max_pairs once VIRTIO_NET_F_MQ is negotiated
        self._ctrl_index = None  # controlq's index, with VIRTIO_NET_F_CTRL_VQ
        self._resume_pairs = None  # pairs a restored state had enabled, for its activation
        self._pairs = [_Pair(i, b) for i, b in enumerate(backends)]
        self._apply_pairs(1)

    # One pair's state under the names the single-pair device had (tests read them).
    @property
    def _pending(self):
        return self._pairs[0].pending

    @property
    def _held(self):
        return self._pairs[0].held

    @property
    def _c_tx(self):
        return self._pairs[0].c_tx

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
        if self.max_pairs > 1:
            # Automatic receive steering (§5.1.6.5.5) is the multi-queue TAP's: the host
            # kernel sends a flow's frames to the queue the guest last sent it from.
            features |= bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ)
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
        return _CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, self.max_pairs, self.mtu)

    @property
    def mac_address(self):
        return format_mac(self.mac)

    # -- life cycle ----------------------------------------------------------------

    def activate(self, memory, queues, interrupt):
        resume, self._resume_pairs = self._resume_pairs, None
        # §5.1.2: receiveq1 and transmitq1 are both needed.
        if len(queues) < 2 or queues[RX_QUEUE] is None or queues[TX_QUEUE] is None:
            raise QueueError("virtio-net activated without receiveq1 and transmitq1 (§5.1.2)")
        super().activate(memory, queues, interrupt)
        # §5.1.2: N pairs with VIRTIO_NET_F_MQ, else 1; controlq follows them, and
        # exists only with VIRTIO_NET_F_CTRL_VQ.
        self._usable_pairs = self.max_pairs if self.has_acked(VIRTIO_NET_F_MQ) else 1
        self._ctrl_index = (2 * self._usable_pairs if self.has_acked(VIRTIO_NET_F_CTRL_VQ)
                            else None)
        for pair in self._pairs:
            pair.forget()
        count = 1
        if resume and resume <= self._usable_pairs and all(
                i < len(queues) and queues[i] is not None for i in range(2 * resume)):
            count = resume  # a restored device: the pairs its driver had enabled
        self._apply_pairs(count)
        if hasattr(self.backend, "set_offload"):
            # The TAP's offloads are the device's, not one queue's: set through the first.
            self.backend.set_offload(tun_offloads(self.acked_features,
                                                  getattr(self.backend, "offloads", 0)))

    def disable_queue(self, index):
        super().disable_queue(index)
        for pair in self._pairs:
            pair.c_rx = pair.c_tx = None
        pair = self._data_pair(index)
        if pair is not None and index == pair.rx_index:
            pair.held = []
            pair.set_polling(False)  # nowhere to put frames: leave them to the TAP

    def mark_broken(self):
        super().mark_broken()
        for pair in self._pairs:
            pair.set_polling(False)

    def reset(self):
        super().reset()
        for pair in self._pairs:
            pair.forget()
            pair.pending = 0
        self._usable_pairs = 1
        self._ctrl_index = None
        self._apply_pairs(1)

    def close(self):
        # Drop every view of guest memory (queues, held chains) so the machine
        # can unmap it.
        self.queues = ()
        self.memory = None
        for pair in self._pairs:
            pair.forget()
            try:
                # The TAP queue back as it was given: another boot opens it again.
                pair.set_attached(True)
            except (OSError, TapError) as e:
                log.debug("virtio-net: cannot re-attach TAP queue %d: %s", pair.index, e)
            if pair.poll is not None:
                pair.poll.close()
                pair.poll = None
            pair.backend.close()

    def event_sources(self):
        return tuple((pair.poll.fileno(), pair.rx_index, self._on_backend_readable)
                     for pair in self._pairs)

    def _set_polling(self, on):
        self._pairs[0].set_polling(on)

    def _data_pair(self, index):
        """The pair queue ``index`` belongs to in the negotiated layout, or None
        (controlq, or a queue beyond it)."""
        if index == self._ctrl_index:
            return None
        number = index // 2
        return self._pairs[number] if number < self._usable_pairs else None

    def _apply_pairs(self, count):
        """Serve ``count`` pairs from now on: their TAP queues attached and polled,
        the others' detached, so that the host kernel steers no frame to a receive
        queue the driver did not enable (§5.1.6.5.5).  Raises TapError if a TAP
        queue cannot be attached (the pairs are then as before)."""
        changed = []
        try:
            for pair in self._pairs[1:]:
                want = pair.index < count
                if pair.attached != want:
                    pair.set_attached(want)
                    changed.append(pair)
        except BaseException:
            for pair in changed:
                try:
                    pair.set_attached(not pair.attached)
                except (OSError, TapError):
                    pass
            raise
        for pair in self._pairs:
            pair.c_tx = None  # the fd a pair transmits on may have changed
            if pair.index < count:
                pair.set_polling(not self.broken)
            else:
                pair.set_polling(False)
                if pair.pending:  # read from a queue now detached: dropped, as the TAP's were
                    self.metrics.rx_dropped_count += 1
                    pair.pending = 0
        self.active_pairs = count

    # -- the data plane (worker thread) ----------------------------------------------

    def process_queue(self, index, batch):
        if index == self._ctrl_index:
            self.metrics.ctrl_notify_count += 1
            batch.serve_chains(self._control)
            return
        pair = self._data_pair(index)
        if pair is None:
            return  # not a queue of the negotiated layout (§5.1.2): never served
        if index == pair.tx_index:
            self.metrics.tx_notify_count += 1
            queue = batch.queue
            if pair.c_tx is None or pair.c_tx[0] is not queue:
                pair.c_tx = (queue, self._c_tx_handler(queue, pair))
            if pair.c_tx[1] is None:
                batch.serve_chains(lambda chain: self._send(chain, pair))
            else:
                batch.serve_heads(pair.c_tx[1])
        elif pair.index < self.active_pairs:
            # The guest added rx buffers: deliver what waits and poll the TAP again.
            self.metrics.rx_notify_count += 1
            self._receive(batch, pair)

    def _on_backend_readable(self, index, batch):
        pair = self._data_pair(index)
        if pair is None or pair.index >= self.active_pairs:
            return
        self.metrics.tap_readable_count += 1
        self._receive(batch, pair)

    def invalid_chain(self, index, error):
        super().invalid_chain(index, error)
        if index != self._ctrl_index and index % 2 == TX_QUEUE:
            # A malformed chain drops its packet alone (§2.7.8).
            self.metrics.tx_dropped_count += 1

    # -- the control virtqueue (§5.1.6.5) ----------------------------------------------

    def _control(self, chain):
        """Carry out one control command; returns the used length (1: the ack)."""
        self.metrics.ctrl_command_count += 1
        try:
            command = parse_ctrl(chain)
        except CtrlError as e:
            self.metrics.ctrl_error_count += 1
            self.guest_error(self._ctrl_index, e.reason, f"control command {chain.head}")
            if e.ack_gpa is None:
                return 0
            self.memory.write(e.ack_gpa, bytes([VIRTIO_NET_ERR]))
            return 1
        try:
            self._carry_out(command)
            ack = VIRTIO_NET_OK
        except CtrlError as e:
            self.metrics.ctrl_error_count += 1
            self.guest_error(self._ctrl_index, e.reason,
                             f"control command {command.cls}.{command.command} refused")
            ack = VIRTIO_NET_ERR
        # §5.1.6.5 "u8 ack": written before the buffer is used.
        self.memory.write(command.ack_gpa, bytes([ack]))
        return 1

    def _carry_out(self, command):
        """Do ``command`` or raise CtrlError naming why not (the ack is then ERR)."""
        if command.cls == VIRTIO_NET_CTRL_MQ:
            if command.command != VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET:
                # RSS_CONFIG and HASH_CONFIG need VIRTIO_NET_F_RSS / HASH_REPORT, not offered.
                raise CtrlError(f"VIRTIO_NET_CTRL_MQ command {command.command} is not "
                                "supported (only VQ_PAIRS_SET, §5.1.6.5.5)", command.ack_gpa)
            self._set_pairs(command)
            return
        # The other classes need features this device does not offer: the driver
        # "MUST NOT issue" them (§5.1.6.5.1 CTRL_RX for RX and MAC, §5.1.6.5.3
        # CTRL_VLAN, §5.1.6.5.4 GUEST_ANNOUNCE, §5.1.6.5.6.1 CTRL_GUEST_OFFLOADS).
        feature = _CTRL_CLASS_FEATURE.get(command.cls)
        if feature is None:
            raise CtrlError(f"unknown control class {command.cls} (§5.1.6.5)", command.ack_gpa)
        raise CtrlError(f"control class {command.cls} needs feature bit {feature}, not "
                        "negotiated (§5.1.6.5)", command.ack_gpa)

    def _set_pairs(self, command):
        # §5.1.6.5.5: struct virtio_net_ctrl_mq_pairs_set { le16 virtqueue_pairs; }, with
        # VIRTIO_NET_F_MQ negotiated; "The driver MUST NOT request a virtqueue_pairs of 0
        # or greater than max_virtqueue_pairs"; "The driver MUST configure the
        # virtqueues before enabling them".
        if not self.has_acked(VIRTIO_NET_F_MQ):
            raise CtrlError("VQ_PAIRS_SET without VIRTIO_NET_F_MQ (§5.1.6.5.5)", command.ack_gpa)
        if command.data_len != 2:
            raise CtrlError(f"VQ_PAIRS_SET with {command.data_len} bytes of data, not 2 "
                            "(§5.1.6.5.5)", command.ack_gpa)
        count = _U16.unpack_from(command.data)[0]
        if not VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= count <= self.max_pairs:
            raise CtrlError(f"VQ_PAIRS_SET {count}: max_virtqueue_pairs is {self.max_pairs} "
                            "(§5.1.6.5.5)", command.ack_gpa)
        queues = self.queues
        missing = [i for i in range(2 * count) if i >= len(queues) or queues[i] is None]
        if missing:
            raise CtrlError(f"VQ_PAIRS_SET {count} with queue {missing[0]} not configured "
                            "(§5.1.6.5.5)", command.ack_gpa)
        try:
            self._apply_pairs(count)
        except (OSError, TapError) as e:
            log.warning("virtio-net %s: cannot enable %d TAP queues: %s", self.mac_address,
                        count, e)
            raise CtrlError(f"VQ_PAIRS_SET {count}: the host's TAP queues could not be "
                            "enabled", command.ack_gpa) from None
        self.metrics.queue_pairs_set_count += 1

    # -- transmit (§5.1.6.2) ------------------------------------------------------

    def process_chain(self, index, chain):
        if index == self._ctrl_index:
            return self._control(chain)
        pair = self._data_pair(index)
        return self._send(chain, pair if pair is not None else self._pairs[0])

    def _tx_backend(self, pair):
        """Where ``pair``'s frames go: its own TAP queue, or the first pair's while
        its own is detached (a driver that sends on a transmit queue beyond
        virtqueue_pairs breaks §5.1.6.5.5; its frames still go out)."""
        return pair.backend if pair.attached else self.backend

    def _c_tx_handler(self, queue, pair=None):
        """``send(head)`` doing :meth:`_send` in C (``xvm_net_tx``), a malformed
        packet or a failed write through :meth:`_send`; None without the C walker
        or without a backend fd that takes one frame per write (``frame_fd``)."""
        pair = self._pairs[0] if pair is None else pair
        args = queue.native_args()
        fd = getattr(self._tx_backend(pair), "frame_fd", None)
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
                return self._send(queue.walk(head), pair)
            metrics.tx_packets += 1
            metrics.tx_bytes += length
            return 0
        return send

    def _send(self, chain, pair=None):
        """Send one tx chain's frame; returns the used length, always 0: the device
        writes nothing into a tx buffer (§5.1.6.2)."""
        pair = self._pairs[0] if pair is None else pair
        try:
            frame_len = parse_tx(chain, self.acked_features)
        except TxError as e:
            self.metrics.tx_dropped_count += 1
            self.guest_error(pair.tx_index, e.reason, f"tx packet {chain.head} dropped")
            return 0
        try:
            self._tx_backend(pair).writev(chain.readable_views())
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

    def _receive(self, batch, pair=None):
        """Deliver frames from ``pair``'s TAP queue, one per unit of ``batch``'s budget."""
        pair = self._pairs[0] if pair is None else pair
        queue = batch.queue
        while batch.take():
            if not pair.pending:
                length = pair.backend.read_into(pair.rxbuf)
                if not length:
                    pair.set_polling(True)
                    return
                pair.pending = length
            if not self._deliver_fast(pair, queue, pair.pending):
                # No rx buffer: stop polling the TAP until the guest adds some.
                if pair.polling:
                    self.metrics.rx_starved_count += 1
                pair.set_polling(False)
                # §2.7.10: buffers added since we last looked must not be missed.
                if queue.enable_notification():
                    continue
                return
            pair.pending = 0
        pair.set_polling(True)

    def _deliver_fast(self, pair, queue, length):
        """:meth:`_deliver` in C (``xvm_net_rx``) when the queue has the C walker and
        no chain is held; anything unusual (a malformed or too small buffer, a
        corrupt ring) goes the Python way."""
        if pair.held or queue.memory.device_dirty is not None:
            # a live migration tracks device writes where chains complete (Queue.add_used)
            return self._deliver(pair, queue, length)
        if pair.c_rx is None or pair.c_rx[0] is not queue:
            pair.c_rx = (queue, self._c_rx_args(queue, pair))
        args = pair.c_rx[1]
        if args is None:
            return self._deliver(pair, queue, length)
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
        return self._deliver(pair, queue, length)

    def _c_rx_args(self, queue, pair):
        args = queue.native_args()
        if args is None:
            return None
        lib, regions, nregions, desc, size, indirect, scratch, max_scratch = args
        ffi = _native_loader.load().ffi
        avail, used = queue.native_rings()
        return (lib.xvm_net_rx, regions, nregions, desc, size, indirect, avail, used,
                1 if queue.event_idx else 0, ffi.from_buffer(pair.rxbuf), scratch,
                max_scratch, ffi.new("uint32_t *"))

    def _next_rx_chain(self, pair, queue):
        """The next usable rx chain (held ones first), or None; malformed
        chains are returned with used length 0 and counted."""
        while True:
            if pair.held:
                return pair.held.pop(0)
            try:
                chain = queue.pop()
            except ChainError as e:
                if e.head is None:
                    raise
                self.invalid_chain(pair.rx_index, e)
                queue.add_used(e.head, 0)
                continue
            if chain is None:
                return None
            # §5.1.6.3: receive buffers are device-writable only, the first one
            # large enough for the header (§5.1.6.3.1).
            if chain.readable or chain.writable_len < VIRTIO_NET_HDR_SIZE:
                self.invalid_chain(pair.rx_index, f"rx buffer {chain.head} is device-readable "
                                   "or shorter than the virtio-net header (§5.1.6.3)")
                queue.add_used(chain.head, 0)
                continue
            return chain

    def _deliver(self, pair, queue, length):
        """Put the frame in ``pair.rxbuf[:length]`` (vnet header first) into rx
        buffers; False if the guest has too few."""
        mergeable = self.has_acked(VIRTIO_NET_F_MRG_RXBUF)
        chains = []
        room = 0
        while room < length:
            chain = self._next_rx_chain(pair, queue)
            if chain is None:
                pair.held[:0] = chains
                return False
            if not mergeable and chain.writable_len < length:
                # §5.1.6.3.1: without MRG_RXBUF each buffer must hold a whole
                # packet; this one cannot: drop the frame, keep the buffer.
                pair.held.insert(0, chain)
                self.metrics.rx_dropped_count += 1
                return True
            chains.append(chain)
            room += chain.writable_len
        # §5.1.6.4 num_buffers: how many descriptor chains the packet spans
        # (1 without VIRTIO_NET_F_MRG_RXBUF), set in the frame's header, then the
        # frame copied in order, buffer after buffer: a guest that publishes one buffer
        # twice (aliased; the spec does not say what it gets) finds the later pieces
        # over the earlier ones, num_buffers included.  xvm_net_rx writes in this order.
        _U16.pack_into(pair.rxbuf, 10, len(chains))
        data = pair.rxview
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
                        self.queue_size, self.max_pairs, self.active_pairs)

    def restore(self, state):
        """Load ``state`` into this device, built from the same configuration (same MAC,
        MTU, queue size and queue pairs; the TAP may be another one).  The transport
        restores its own state next and activates the device, which then enables
        the pairs the driver had enabled."""
        if (format_mac(self.mac), self.mtu, self.queue_size, self.max_pairs) != (
                state.mac, state.mtu, state.queue_size, state.queue_pairs):
            raise NetConfigError(f"NIC {format_mac(self.mac)} is configured unlike the snapshot's "
                                 f"{state.mac} (MAC, MTU, queue size, queue pairs)")
        self.acked_features = state.acked_features
        self._resume_pairs = state.active_pairs


__all__ = ["VirtioNet", "VIRTIO_ID_NET", "MAX_QUEUE_PAIRS", "parse_mac", "format_mac",
           "TapError"]

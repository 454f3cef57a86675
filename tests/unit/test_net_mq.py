"""virtio-net multiqueue (virtio 1.2 §5.1.6.5.5) and the control virtqueue (§5.1.6.5)
without a guest: mmio registers, the worker thread, one socketpair per queue pair in
place of a multi-queue TAP's queues; good and hostile control commands."""
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.devices.net import NetState, VirtioNet
from xvm.devices.net.errors import NetConfigError
from xvm.devices.net.request import (
    VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
)
from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1, EventFdLine,
    bit, has_feature,
)
from xvm.devices.virtio.testing import MmioDriver, ring_footprint
from xvm.kvm.memory import GuestMemory

import test_net_device

RING = 0x10000
CTRLBUF = 0x80000
ACK = 0x90000
TXBUF = 0x100000
RXBUF = 0x200000
MAC = "52:54:00:aa:bb:01"
HDR = bytes(12)
FRAME = bytes.fromhex("ffffffffffff525400aabb0188b5") + b"multiqueue frame" * 3
PAIRS = 3


class PairBackend(test_net_device.PairBackend):
    """One TAP queue's stand-in (one datagram, one frame with its vnet header);
    ``attached`` follows TUNSETQUEUE as the device asks it."""

    def __init__(self):
        super().__init__()
        self.attached = True
        self.attach_calls = []

    @property
    def frame_fd(self):  # one writev, one datagram: one frame (the C transmit path's fd)
        return self.sock.fileno()

    def set_queue_attached(self, on):
        self.attach_calls.append(on)
        self.attached = on


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 0x1000000)]) as mem:
        yield mem


@pytest.fixture
def mq(memory):
    irq = EventFdLine()
    backends = [PairBackend() for _ in range(PAIRS)]
    dev = VirtioNet(MAC, backends=backends)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    yield dev, mmio, backends
    mmio.close()
    dev.close()
    irq.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)


class MqDriver:
    """A guest driver in miniature: sets up ``queues`` (indexes) and talks to controlq."""

    def __init__(self, memory, mmio, features, queues):
        self.memory = memory
        self.driver = MmioDriver(mmio, memory, RING, queue_size=16)
        d = self.driver
        d.w(M.VIRTIO_MMIO_STATUS, 0)
        d.add_status(1 | 2)
        d.write_features(features)
        d.add_status(VIRTIO_CONFIG_S_FEATURES_OK)
        if not d.status() & VIRTIO_CONFIG_S_FEATURES_OK:
            raise RuntimeError("device refused FEATURES_OK")
        self.rings = {}
        base = RING
        for index in queues:
            ring = d.setup_queue(index, base)
            self.rings[index] = ring
            base += ring_footprint(ring.size)
        d.add_status(4)
        self.ctrl_index = max(queues)
        self.rx_slot = 0

    def command(self, cls, cmd, data=b"", *, chain=None, ack_fill=0xAA):
        """Send one control command; returns (used length, ack byte)."""
        ring = self.rings[self.ctrl_index]
        self.memory.write(CTRLBUF, bytes([cls, cmd]) + data)
        self.memory.write(ACK, bytes([ack_fill]))
        if chain is None:
            chain = [(CTRLBUF, 2 + len(data), False), (ACK, 1, True)]
        head = ring.add_chain(chain)
        ring.publish(head)
        self.driver.kick(self.ctrl_index)
        [(used_head, used_len)] = ring.wait_used()
        assert used_head == head
        return used_len, self.memory.read(ACK, 1)[0]

    def set_pairs(self, count):
        return self.command(VIRTIO_NET_CTRL_MQ, 0, struct.pack("<H", count))

    def send(self, tx_index, frame):
        ring = self.rings[tx_index]
        gpa = TXBUF + tx_index * 0x10000
        self.memory.write(gpa, HDR + frame)
        head = ring.add_chain([(gpa, len(HDR) + len(frame), False)])
        ring.publish(head)
        self.driver.kick(tx_index)
        return ring.wait_used()

    def add_rx(self, rx_index, count=4):
        ring = self.rings[rx_index]
        for _ in range(count):
            gpa = RXBUF + (self.rx_slot % 64) * 0x10000
            self.rx_slot += 1
            ring.publish(ring.add_chain([(gpa, 2048, True)]))
        self.driver.kick(rx_index)

    def received(self, rx_index, timeout=5.0):
        ring = self.rings[rx_index]
        return ring.wait_used(timeout=timeout)


MQ_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_CTRL_VQ) \
    | bit(VIRTIO_NET_F_MQ)
ALL_QUEUES = list(range(2 * PAIRS + 1))  # rx0, tx0, rx1, tx1, rx2, tx2, controlq


def test_one_backend_keeps_the_single_pair_layout(memory):
    irq = EventFdLine()
    dev = VirtioNet(MAC, backend=PairBackend())
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    try:
        assert dev.queue_max_sizes == (256, 256)
        features = MmioDriver(mmio, memory, RING).device_features()
        assert not has_feature(features, VIRTIO_NET_F_MQ)
        assert not has_feature(features, VIRTIO_NET_F_CTRL_VQ)
    finally:
        mmio.close()
        dev.close()
        irq.close()


def test_config_space_offers_the_pairs(mq, memory):
    dev, mmio, _ = mq
    cfg = bytes(mmio.read(M.VIRTIO_MMIO_CONFIG + i, 1) for i in range(12))
    _, _, pairs, _ = struct.unpack("<6sHHH", cfg)
    assert pairs == PAIRS
    features = MmioDriver(mmio, memory, RING).device_features()
    assert has_feature(features, VIRTIO_NET_F_MQ) and has_feature(features, VIRTIO_NET_F_CTRL_VQ)
    # rx0, tx0, ..., controlq: 2N + 1 queues.
    assert len(dev.queue_max_sizes) == 2 * PAIRS + 1


def test_mq_without_ctrl_vq_refused(mq, memory):
    _, mmio, _ = mq
    with pytest.raises(RuntimeError, match="FEATURES_OK"):
        # §5.1.3.1: VIRTIO_NET_F_MQ requires VIRTIO_NET_F_CTRL_VQ.
        MqDriver(memory, mmio, bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MQ), [0, 1])


def test_bad_pair_counts_refused():
    with pytest.raises(NetConfigError, match="queue pairs"):
        VirtioNet(MAC, backends=[])
    with pytest.raises(NetConfigError, match="queue pairs"):
        VirtioNet(MAC, backends=[object()] * 17)
    with pytest.raises(NetConfigError, match="not both"):
        VirtioNet(MAC)


def test_only_the_first_pair_until_vq_pairs_set(mq, memory):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    # §5.1.6.5.5 "After initialization of reset, the device MUST queue packets only on
    # receiveq1": the other TAP queues are detached, and not polled.
    assert dev.active_pairs == 1
    assert [b.attached for b in backends] == [True, False, False]
    for rx in (0, 2, 4):
        drv.add_rx(rx)
    backends[0].peer.send(HDR + FRAME)
    [(_, length)] = drv.received(0)
    assert length == len(HDR + FRAME)
    backends[1].peer.send(HDR + FRAME)  # a detached queue: the kernel would not steer here
    with pytest.raises(TimeoutError):
        drv.received(2, timeout=0.3)


def test_vq_pairs_set_enables_pairs_each_on_its_own_backend(mq, memory):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    for rx in (0, 2, 4):
        drv.add_rx(rx)
    assert drv.set_pairs(2) == (1, VIRTIO_NET_OK)
    assert dev.active_pairs == 2 and dev.metrics.queue_pairs_set_count == 1
    assert [b.attached for b in backends] == [True, True, False]
    # Receive: each pair's frames come from its own TAP queue into its own receiveq.
    backends[1].peer.send(HDR + FRAME + b"pair1")
    [(head, length)] = drv.received(2)
    assert length == len(HDR + FRAME) + 5
    backends[0].peer.send(HDR + FRAME + b"pair0")
    [(_, length)] = drv.received(0)
    assert length == len(HDR + FRAME) + 5
    # Transmit: transmitq2 (queue 3) writes to the second TAP queue.
    drv.send(3, FRAME + b"from tx1")
    assert backends[1].peer.recv(4096) == HDR + FRAME + b"from tx1"
    drv.send(1, FRAME + b"from tx0")
    assert backends[0].peer.recv(4096) == HDR + FRAME + b"from tx0"
    # Back to one pair: the second TAP queue is detached again.
    assert drv.set_pairs(1) == (1, VIRTIO_NET_OK)
    assert [b.attached for b in backends] == [True, False, False]
    assert dev.metrics.tx_packets == 2 and dev.metrics.rx_packets == 2


def test_transmit_on_a_pair_not_enabled_goes_out_through_the_first(mq, memory):
    """A driver that sends on transmitq2 before enabling it breaks §5.1.6.5.5; the frame
    still goes out (its own TAP queue is detached and would refuse it)."""
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    drv.send(3, FRAME)
    assert backends[0].peer.recv(4096) == HDR + FRAME
    assert dev.metrics.tx_packets == 1


@pytest.mark.parametrize("count", [0, PAIRS + 1, 0x8000, 0xFFFF])
def test_vq_pairs_set_out_of_range_is_err(mq, memory, count):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    assert drv.set_pairs(count) == (1, VIRTIO_NET_ERR)
    assert dev.active_pairs == 1 and [b.attached for b in backends] == [True, False, False]
    assert dev.metrics.ctrl_error_count == 1 and not dev.broken
    assert drv.set_pairs(PAIRS) == (1, VIRTIO_NET_OK)  # the queue goes on
    assert dev.active_pairs == PAIRS


# Hostile or unsupported commands: each answered VIRTIO_NET_ERR, the queue goes on.
HOSTILE = {
    "pairs-data-short": (VIRTIO_NET_CTRL_MQ, 0, b"\x02"),
    "pairs-data-long": (VIRTIO_NET_CTRL_MQ, 0, b"\x02\x00\x00"),
    "pairs-no-data": (VIRTIO_NET_CTRL_MQ, 0, b""),
    "mq-rss-config": (VIRTIO_NET_CTRL_MQ, 1, bytes(64)),
    "mq-hash-config": (VIRTIO_NET_CTRL_MQ, 2, bytes(8)),
    "mq-unknown": (VIRTIO_NET_CTRL_MQ, 200, b"\x02\x00"),
    # What Linux sends with features this device does not offer (§5.1.6.5.1-4).
    "rx-promisc": (VIRTIO_NET_CTRL_RX, 0, b"\x01"),
    "rx-allmulti": (VIRTIO_NET_CTRL_RX, 1, b"\x00"),
    "mac-table-set": (VIRTIO_NET_CTRL_MAC, 0, struct.pack("<I", 0) + struct.pack("<I", 1)
                      + bytes.fromhex("01005e000001")),
    "mac-addr-set": (VIRTIO_NET_CTRL_MAC, 1, bytes.fromhex("525400aabb02")),
    "vlan-add": (VIRTIO_NET_CTRL_VLAN, 0, b"\x05\x00"),
    "announce-ack": (VIRTIO_NET_CTRL_ANNOUNCE, 0, b""),
    "unknown-class": (99, 0, b""),
    "huge-data": (VIRTIO_NET_CTRL_MQ, 0, bytes(5000)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_refused_commands_get_err_and_change_nothing(mq, memory, name):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    cls, cmd, data = HOSTILE[name]
    assert drv.command(cls, cmd, data) == (1, VIRTIO_NET_ERR)
    assert dev.active_pairs == 1 and not dev.broken
    assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET
    assert drv.set_pairs(2) == (1, VIRTIO_NET_OK)
    assert dev.metrics.ctrl_command_count == 2 and dev.metrics.ctrl_error_count == 1


def test_malformed_control_chains_fail_alone(mq, memory):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    # No ack byte: nothing can be answered; the chain is returned with used length 0.
    assert drv.command(VIRTIO_NET_CTRL_MQ, 0, b"\x02\x00",
                       chain=[(CTRLBUF, 4, False)]) == (0, 0xAA)
    # No class and command before the ack: answered ERR.
    assert drv.command(0, 0, chain=[(CTRLBUF, 1, False), (ACK, 1, True)]) == (1, VIRTIO_NET_ERR)
    assert drv.command(0, 0, chain=[(ACK, 1, True)]) == (1, VIRTIO_NET_ERR)
    # A buffer outside guest RAM: a malformed chain (§2.7.8), returned unused.
    assert drv.command(0, 0, chain=[(0x10000000, 4, False), (ACK, 1, True)]) == (0, 0xAA)
    # Writable before readable (§2.7.4.2): malformed too.
    assert drv.command(0, 0, chain=[(ACK, 1, True), (CTRLBUF, 4, False)]) == (0, 0xAA)
    # The command split over descriptors is fine.
    memory.write(CTRLBUF, bytes([VIRTIO_NET_CTRL_MQ, 0]))
    memory.write(CTRLBUF + 0x100, struct.pack("<H", 2))
    ring = drv.rings[drv.ctrl_index]
    head = ring.add_chain([(CTRLBUF, 1, False), (CTRLBUF + 1, 1, False),
                           (CTRLBUF + 0x100, 2, False), (ACK, 1, True)])
    ring.publish(head)
    drv.driver.kick(drv.ctrl_index)
    assert ring.wait_used() == [(head, 1)] and memory.read(ACK, 1)[0] == VIRTIO_NET_OK
    assert dev.active_pairs == 2 and not dev.broken
    assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET


def test_vq_pairs_set_with_unconfigured_queues_is_err(mq, memory):
    """§5.1.6.5.5 "The driver MUST configure the virtqueues before enabling them"."""
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, [0, 1, 2, 3, 2 * PAIRS])  # pair 2 left out
    assert drv.set_pairs(3) == (1, VIRTIO_NET_ERR)
    assert drv.set_pairs(2) == (1, VIRTIO_NET_OK)
    assert dev.active_pairs == 2


def test_ctrl_vq_without_mq_is_queue_2_and_refuses_pairs(mq, memory):
    """§5.1.2: without VIRTIO_NET_F_MQ, N=1 and controlq is queue 2."""
    dev, mmio, backends = mq
    features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_CTRL_VQ)
    drv = MqDriver(memory, mmio, features, [0, 1, 2])
    assert drv.set_pairs(2) == (1, VIRTIO_NET_ERR)
    assert dev.active_pairs == 1
    drv.send(1, FRAME)
    assert backends[0].peer.recv(4096) == HDR + FRAME


def test_reset_goes_back_to_one_pair(mq, memory):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    assert drv.set_pairs(3) == (1, VIRTIO_NET_OK)
    assert [b.attached for b in backends] == [True, True, True]
    MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)  # status 0 first: a reset
    assert dev.active_pairs == 1 and [b.attached for b in backends] == [True, False, False]


def test_close_reattaches_every_tap_queue(memory):
    backends = [PairBackend() for _ in range(2)]
    dev = VirtioNet(MAC, backends=backends)
    assert [b.attached for b in backends] == [True, False]
    dev.close()  # the fds are the VMM's: the next boot's device opens them attached
    assert [b.attached for b in backends] == [True, True]


def test_state_carries_the_pairs_and_old_states_load():
    backends = [PairBackend() for _ in range(2)]
    dev = VirtioNet(MAC, backends=backends)
    try:
        state = dev.save()
        assert (state.queue_pairs, state.active_pairs) == (2, 1)
        assert NetState.restore(state.save()) == state
        old = {"mac": MAC, "mtu": 1500, "bridge": None, "acked_features": 0, "queue_size": 256}
        assert (NetState.restore(old).queue_pairs, NetState.restore(old).active_pairs) == (1, 1)
        with pytest.raises(NetConfigError, match="queue pairs"):
            dev.restore(NetState.restore(old))  # a one-pair snapshot into a two-pair NIC
    finally:
        dev.close()


def test_restored_device_enables_the_pairs_its_driver_had(mq, memory):
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    assert drv.set_pairs(2) == (1, VIRTIO_NET_OK)
    mmio.pause()  # and stays paused: the restored device takes the guest's rings over
    saved_dev, saved_transport = dev.save(), mmio.save()
    assert saved_dev.active_pairs == 2
    irq = EventFdLine()
    fresh = [PairBackend() for _ in range(PAIRS)]
    dev2 = VirtioNet(MAC, backends=fresh)
    mmio2 = M.VirtioMmioDevice(dev2, memory, irq)
    try:
        dev2.restore(saved_dev)
        mmio2.restore(saved_transport)
        assert dev2.active_pairs == 2 and [b.attached for b in fresh] == [True, True, False]
        drv.driver.mmio = mmio2
        drv.add_rx(2)  # the guest goes on with its rings, now the restored device's
        fresh[1].peer.send(HDR + FRAME)
        ring = drv.rings[2]
        wait_for(lambda: ring.used_idx() != ring.last_used)
    finally:
        mmio2.close()
        dev2.close()
        irq.close()


def test_every_pair_keeps_the_c_fast_path(mq, memory, monkeypatch):
    """rx and tx of the second pair go through xvm_net_rx / xvm_net_tx, not the Python
    reference path (which stays the fallback for anything unusual)."""
    from xvm.devices.virtio import native
    if native.load() is None:
        pytest.skip("the C chain walker could not be built here")
    calls = []
    deliver, send = VirtioNet._deliver, VirtioNet._send
    monkeypatch.setattr(VirtioNet, "_deliver", lambda *a: calls.append("rx") or deliver(*a))
    monkeypatch.setattr(VirtioNet, "_send", lambda *a: calls.append("tx") or send(*a))
    dev, mmio, backends = mq
    drv = MqDriver(memory, mmio, MQ_FEATURES, ALL_QUEUES)
    drv.add_rx(2)
    assert drv.set_pairs(2) == (1, VIRTIO_NET_OK)
    for n in range(3):
        backends[1].peer.send(HDR + FRAME + bytes([n]))
        drv.received(2)
        drv.send(3, FRAME + bytes([n]))
        assert backends[1].peer.recv(4096) == HDR + FRAME + bytes([n])
    assert dev.metrics.rx_packets == 3 and dev.metrics.tx_packets == 3
    assert calls == []


_ONE_PIECE = st.integers(1, 6)


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 99, 255]), cmd=st.integers(0, 3),
       data=st.one_of(st.binary(max_size=12),
                      st.integers(0, 0xFFFF).map(lambda v: struct.pack("<H", v))),
       cut=st.lists(_ONE_PIECE, max_size=4), ack_len=st.integers(0, 3))
def test_any_control_command_gets_ok_or_err_and_breaks_nothing(cls, cmd, data, cut, ack_len):
    """Whatever a driver puts on controlq, split however: the answer is VIRTIO_NET_OK
    only for a valid VQ_PAIRS_SET, VIRTIO_NET_ERR otherwise (nothing without an ack
    byte), and the device is never broken."""
    from xvm.devices.virtio.queue import DescriptorChain, Queue
    with GuestMemory.create([(0, 0x100000)]) as memory:
        backends = [PairBackend() for _ in range(PAIRS)]
        dev = VirtioNet(MAC, backends=backends, queue_size=8)
        queues = []
        try:
            queues += [Queue(memory, 8, 0x1000 * (i + 1), 0x1000 * (i + 1) + 0x100,
                             0x1000 * (i + 1) + 0x400) for i in range(2 * PAIRS + 1)]
            dev.ack_features(dev.device_features)
            dev.activate(memory, queues, None)
            raw = bytes([cls, cmd]) + data
            memory.write(0x20000, raw)
            readable, offset = [], 0
            for piece in cut + [len(raw)]:
                if offset >= len(raw):
                    break
                take = min(piece, len(raw) - offset)
                readable.append((0x20000 + offset, take))
                offset += take
            writable = [(0x30000, ack_len)] if ack_len else []
            memory.write(0x30000, b"\xaa")
            chain = DescriptorChain(0, tuple(readable), tuple(writable), memory)
            used = dev.process_chain(2 * PAIRS, chain)
            valid = ((cls, cmd, len(data)) == (4, 0, 2)
                     and 1 <= struct.unpack("<H", data)[0] <= PAIRS)
            if not ack_len:
                assert used == 0 and memory.read(0x30000, 1) == b"\xaa"
            else:
                assert used == 1
                assert memory.read(0x30000, 1)[0] == (VIRTIO_NET_OK if valid else VIRTIO_NET_ERR)
            expected_pairs = struct.unpack("<H", data)[0] if valid and ack_len else 1
            assert dev.active_pairs == expected_pairs and not dev.broken
            assert [b.attached for b in backends] == [i < expected_pairs for i in range(PAIRS)]
        finally:
            dev.queues = ()
            dev.close()
            queues.clear()  # their views of guest memory go before it does (no gc.collect in close)
            chain = None

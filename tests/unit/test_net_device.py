"""virtio-net end to end without a guest: mmio registers, the worker thread,
real eventfds, and a socketpair (or a real TAP) in place of the network."""
import os
import socket
import struct
import time

import pytest

from xvm.devices.net import VirtioNet
from xvm.devices.net.device import VIRTIO_NET_S_LINK_UP
from xvm.devices.net.request import (
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
)
from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, EventFdLine, bit, has_feature,
)
from xvm.devices.virtio.testing import MmioDriver
from xvm.kvm.memory import GuestMemory

RING = 0x10000
TXBUF = 0x100000
RXBUF = 0x200000
RX_SLOT = 0x1000  # one rx buffer per page
HDR = struct.Struct("<BBHHHHH")
MAC = "52:54:00:aa:bb:cc"
FRAME = bytes.fromhex("ffffffffffff525400aabbcc88b5") + b"hello from the guest" * 3


class PairBackend:
    """A backend over one end of a SOCK_SEQPACKET socketpair: each datagram is
    one frame with its 12-byte virtio-net header, like a TAP with IFF_VNET_HDR."""

    offloads = 0

    def __init__(self):
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.peer.settimeout(5)
        self.sent_offloads = []

    def fileno(self):
        return self.sock.fileno()

    def read_into(self, buffer):
        try:
            return self.sock.recv_into(buffer)
        except BlockingIOError:
            return None

    def writev(self, views):
        return self.sock.sendmsg(views)

    def set_offload(self, flags):
        self.sent_offloads.append(flags)

    def close(self):
        self.sock.close()
        self.peer.close()


class NetDriver:
    """A guest virtio-net driver in miniature: queue 0 receives, 1 transmits."""

    def __init__(self, memory, mmio, features=None, queue_size=16):
        self.memory = memory
        self.mmio = mmio
        self.driver = MmioDriver(mmio, memory, RING, queue_size=queue_size)
        self.features = self.driver.init(features, num_queues=2)
        self.rx, self.tx = self.driver.rings
        self.rx_slot = 0

    def send(self, frame, header=None, buffers=None):
        """Queue one packet (split over ``buffers`` if given) and kick."""
        header = header if header is not None else HDR.pack(0, 0, 0, 0, 0, 0, 0)
        data = header + frame
        self.memory.write(TXBUF, data)
        if buffers is None:
            buffers = [(TXBUF, len(data), False)]
        head = self.tx.add_chain(buffers)
        self.tx.publish(head)
        self.driver.kick(1)
        return head

    def add_rx(self, count=1, size=2048):
        heads = []
        for _ in range(count):
            gpa = RXBUF + (self.rx_slot % 64) * 0x10000
            self.rx_slot += 1
            head = self.rx.add_chain([(gpa, size, True)])
            self.rx.publish(head)
            heads.append((head, gpa))
        self.driver.kick(0)
        return heads


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 0x1000000)]) as mem:
        yield mem


@pytest.fixture
def irq():
    line = EventFdLine()
    yield line
    line.close()


@pytest.fixture
def net(memory, irq):
    backend = PairBackend()
    dev = VirtioNet(MAC, backend=backend, mtu=9000)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    yield dev, mmio, backend
    mmio.close()
    dev.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)


def test_config_space_and_features(net, memory):
    dev, mmio, _ = net
    cfg = bytes(mmio.read(M.VIRTIO_MMIO_CONFIG + i, 1) for i in range(12))
    mac, status, pairs, mtu = struct.unpack("<6sHHH", cfg)
    assert mac == bytes.fromhex("525400aabbcc")
    assert status == VIRTIO_NET_S_LINK_UP and pairs == 1 and mtu == 9000
    drv = NetDriver(memory, mmio)
    for f in (VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MTU,
              VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4,
              VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC):
        assert has_feature(drv.features, f), f
    # The socketpair backend offers no receive offloads: no GUEST_* features.
    assert not has_feature(drv.features, VIRTIO_NET_F_GUEST_TSO4)
    assert dev.metrics.activate_count == 1


def test_feature_dependencies_refused(net, memory):
    dev, mmio, _ = net
    drv = MmioDriver(mmio, memory, RING)
    with pytest.raises(RuntimeError, match="FEATURES_OK"):
        # HOST_TSO4 needs CSUM (§5.1.3.1).
        drv.init(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_HOST_TSO4), num_queues=2)
    assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_FEATURES_OK


def test_transmit(net, memory, irq):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    head = drv.send(FRAME)
    assert drv.tx.wait_used() == [(head, 0)]
    got = backend.peer.recv(65536)
    assert got[:12] == bytes(12) and got[12:] == FRAME
    assert dev.metrics.tx_packets == 1 and dev.metrics.tx_bytes == len(FRAME)
    assert irq.read() >= 1


def test_transmit_split_over_descriptors(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    # Header in its own descriptor, the frame in three pieces.
    n = 12 + len(FRAME)
    pieces = [(TXBUF, 12, False), (TXBUF + 12, 10, False), (TXBUF + 22, 1, False),
              (TXBUF + 23, n - 23, False)]
    drv.send(FRAME, buffers=pieces)
    drv.tx.wait_used()
    assert backend.peer.recv(65536)[12:] == FRAME


@pytest.mark.parametrize("case", [
    "writable", "too_short", "csum_not_negotiated", "csum_outside", "gso_no_csum",
    "rx_flags", "bad_next",
])
def test_malformed_tx_dropped_alone(memory, irq, case):
    backend = PairBackend()
    dev = VirtioNet(MAC, backend=backend)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    try:
        features = None
        if case == "csum_not_negotiated":
            features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC)
        drv = NetDriver(memory, mmio, features=features)
        n = 12 + len(FRAME)
        header = None
        buffers = None
        if case == "writable":
            buffers = [(TXBUF, n - 4, False), (TXBUF + n - 4, 4, True)]
        elif case == "too_short":
            buffers = [(TXBUF, 20, False)]
        elif case == "csum_not_negotiated":
            header = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14, 6, 0)
        elif case == "csum_outside":
            header = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 1000, 6, 0)
        elif case == "gso_no_csum":
            header = HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 0, 0, 0)
        elif case == "rx_flags":
            header = HDR.pack(2, 0, 0, 0, 0, 0, 0)  # DATA_VALID is receive-only
        if case == "bad_next":
            memory.write(TXBUF, bytes(12) + FRAME)
            drv.tx.write_desc(0, TXBUF, n, flags=1, next_index=200)  # NEXT beyond the table
            drv.tx.next_free = 1
            drv.tx.publish(0)
            drv.driver.kick(1)
            head = 0
        else:
            head = drv.send(FRAME, header=header, buffers=buffers)
        assert drv.tx.wait_used() == [(head, 0)]
        wait_for(lambda: dev.metrics.tx_dropped_count == 1)
        assert dev.metrics.tx_packets == 0
        # The device goes on: a good packet after the bad one is sent.
        drv.send(FRAME)
        drv.tx.wait_used()
        assert backend.peer.recv(65536)[12:] == FRAME
        assert dev.metrics.tx_packets == 1
        assert not mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET
    finally:
        mmio.close()
        dev.close()


def test_offloaded_tx_header_passes_through(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    header = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14, 6, 0)
    drv.send(FRAME, header=header)
    drv.tx.wait_used()
    assert backend.peer.recv(65536)[:12] == header


def test_receive(net, memory, irq):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    (head, gpa), = drv.add_rx(1)
    irq.read()
    backend.peer.send(bytes(12) + FRAME)
    (used_head, used_len), = drv.rx.wait_used()
    assert used_head == head and used_len == 12 + len(FRAME)
    hdr = HDR.unpack(memory.read(gpa, 12))
    assert hdr[6] == 1  # num_buffers (§5.1.6.4)
    assert memory.read(gpa + 12, len(FRAME)) == FRAME
    # the worker counts the frame just after publishing it in the used ring
    wait_for(lambda: dev.metrics.rx_packets == 1)
    assert dev.metrics.rx_packets == 1
    wait_for(lambda: irq.read() >= 1)


def test_receive_mergeable_spans_buffers(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    assert has_feature(drv.features, VIRTIO_NET_F_MRG_RXBUF)
    bufs = drv.add_rx(4, size=1000)
    big = os.urandom(2500)
    backend.peer.send(bytes(12) + big)
    used = drv.rx.wait_used(3)
    assert [h for h, _ in used] == [h for h, _ in bufs[:3]]
    assert [n for _, n in used] == [1000, 1000, 512]
    got = b"".join(memory.read(gpa, n) for (_, gpa), (_, n) in zip(bufs, used))
    assert HDR.unpack(got[:12])[6] == 3
    assert got[12:] == big


def test_receive_without_mergeable_drops_too_large(memory, irq):
    backend = PairBackend()
    dev = VirtioNet(MAC, backend=backend)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    try:
        drv = NetDriver(memory, mmio, features=bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC))
        drv.add_rx(1, size=200)
        backend.peer.send(bytes(12) + os.urandom(500))  # does not fit: dropped
        backend.peer.send(bytes(12) + FRAME)  # fits the same buffer
        (_, used_len), = drv.rx.wait_used()
        assert used_len == 12 + len(FRAME)
        assert dev.metrics.rx_dropped_count == 1 and dev.metrics.rx_packets == 1
    finally:
        mmio.close()
        dev.close()


def test_backpressure_stops_polling_until_buffers(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    for i in range(3):
        backend.peer.send(bytes(12) + FRAME + bytes([i]))
    wait_for(lambda: dev.metrics.rx_starved_count == 1)
    time.sleep(0.05)
    # Polling stopped: the worker is not woken over and over by the waiting frames.
    wakeups = dev.metrics.tap_readable_count
    time.sleep(0.1)
    assert dev.metrics.tap_readable_count == wakeups <= 2
    bufs = drv.add_rx(3)
    used = drv.rx.wait_used(3)
    for i, ((_, gpa), (_, n)) in enumerate(zip(bufs, used)):
        assert memory.read(gpa + 12, n - 12) == FRAME + bytes([i])
    # Polling is back on: a new frame finds a new buffer.
    (_, gpa), = drv.add_rx(1)
    backend.peer.send(bytes(12) + FRAME)
    drv.rx.wait_used(1)
    assert dev.metrics.rx_packets == 4


def test_malformed_rx_chain_returned_unused(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    # A device-readable rx buffer, then a good one.
    bad = drv.rx.add_chain([(RXBUF, 100, False)])
    drv.rx.publish(bad)
    good = drv.rx.add_chain([(RXBUF + 0x10000, 2048, True)])
    drv.rx.publish(good)
    drv.driver.kick(0)
    backend.peer.send(bytes(12) + FRAME)
    used = drv.rx.wait_used(2)
    assert used == [(bad, 0), (good, 12 + len(FRAME))]
    assert dev.metrics.invalid_chain_count == 1


def test_corrupt_ring_needs_reset(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    memory.write_u16(drv.tx.avail_ring + 2, 1000)  # avail.idx far beyond Queue Size
    drv.driver.kick(1)
    wait_for(lambda: mmio.read(M.VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_NEEDS_RESET)
    assert dev.broken and dev.metrics.queue_error_count == 1


def test_reset_and_reinit(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    drv.send(FRAME)
    drv.tx.wait_used()
    drv2 = NetDriver(memory, mmio)  # init writes status 0 first: a reset
    drv2.send(FRAME)
    drv2.tx.wait_used()
    assert dev.metrics.tx_packets == 2 and dev.metrics.activate_count == 2


def test_save_restore_state(net):
    dev, _, _ = net
    state = dev.save()
    assert state.mac == MAC and state.mtu == 9000
    from xvm.devices.net import NetState
    assert NetState.restore(state.save()) == state


def test_transmit_header_split_across_descriptors(net, memory):
    dev, mmio, backend = net
    drv = NetDriver(memory, mmio)
    header = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14, 6, 0)
    n = 12 + len(FRAME)
    drv.send(FRAME, header=header,
             buffers=[(TXBUF, 5, False), (TXBUF + 5, 3, False), (TXBUF + 8, n - 8, False)])
    drv.tx.wait_used()
    assert backend.peer.recv(65536) == header + FRAME
    # The same split with an illegal header is still caught.
    bad = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 500, 6, 0)
    drv.send(FRAME, header=bad,
             buffers=[(TXBUF, 5, False), (TXBUF + 5, 3, False), (TXBUF + 8, n - 8, False)])
    drv.tx.wait_used()
    wait_for(lambda: dev.metrics.tx_dropped_count == 1)


class SlowBackend(PairBackend):
    """A TAP whose writes take a while (a busy host): the guest refills its tx
    queue faster than the device drains it."""

    def writev(self, views):
        time.sleep(0.0002)
        return super().writev(views)


def test_reset_under_a_full_tx_queue(memory, irq):
    """A guest resubmitting every tx packet as soon as it is used, while another
    vCPU resets the device: the reset returns at once, never raises."""
    import threading
    backend = SlowBackend()
    dev = VirtioNet(MAC, backend=backend, mtu=9000)
    mmio = M.VirtioMmioDevice(dev, memory, irq)
    drv = NetDriver(memory, mmio, queue_size=256)
    memory.write(TXBUF, bytes(12) + FRAME)
    for _ in range(256):
        drv.tx.publish(drv.tx.add_chain([(TXBUF, 12 + len(FRAME), False)]))
    notify = os.dup(mmio.notify_eventfds()[1])
    stop = threading.Event()
    backend.peer.settimeout(0.05)

    def flood():
        while not stop.is_set():
            used = drv.tx.take_used()
            for head, _ in used:
                drv.tx.publish(head)
            if used:
                os.eventfd_write(notify, 1)
            else:
                time.sleep(0)

    def sink():
        while not stop.is_set():
            try:
                backend.peer.recv(65536)
            except (TimeoutError, OSError):
                pass

    threads = [threading.Thread(target=f, daemon=True) for f in (flood, sink)]
    for t in threads:
        t.start()
    os.eventfd_write(notify, 1)
    try:
        wait_for(lambda: dev.metrics.tx_packets + dev.metrics.tap_write_error_count > 1000)
        worker = mmio.transport._worker
        start = time.monotonic()
        mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0)
        elapsed = time.monotonic() - start
        print(f"\nreset under a full tx queue took {elapsed * 1000:.1f} ms")
        assert elapsed < 0.5
        assert not worker.running and mmio.read(M.VIRTIO_MMIO_STATUS, 4) == 0
        drv2 = NetDriver(memory, mmio)
        head = drv2.send(FRAME)
        assert drv2.tx.wait_used() == [(head, 0)]
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        os.close(notify)
        mmio.close()
        dev.close()

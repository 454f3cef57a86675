"""The virtio-mmio transport driven register by register, as Linux does."""
import os
import select
import threading
import time

import pytest

from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, DeviceStatus, EventFdLine, InterruptKind,
    VirtioDevice, bit,
)
from xvm.devices.virtio.errors import QueueError, StatusError
from xvm.devices.virtio.mmio import VirtioMmioDevice
from xvm.devices.virtio.testing import MmioDriver
from xvm.devices.virtio.worker import drain_eventfd
from xvm.kvm.memory import GuestMemory

RING = 0x10000
DATA = 0x80000
FEATURE_X = 3  # a device-specific feature bit of the test device


class EchoDevice(VirtioDevice):
    """Two queues; every chain is copied readable → writable and completed."""

    device_id = 42
    queue_max_sizes = (16, 8)

    def __init__(self):
        super().__init__()
        self.threads = set()
        self.reset_count = 0
        self.fail_next = False
        self.bug_next = False
        self.config = bytearray(b"\x11\x22\x33\x44\x55\x66\x77\x88")

    @property
    def device_features(self):
        return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(FEATURE_X)

    def config_space(self):
        return bytes(self.config)

    def write_config(self, offset, data):
        self.config[offset:offset + len(data)] = data

    def process_queue(self, index, batch):
        self.threads.add(threading.current_thread().name)
        if self.fail_next:
            raise QueueError("test: ring broken")
        super().process_queue(index, batch)

    def process_chain(self, index, chain):
        if self.bug_next:
            raise RuntimeError("test: a VMM bug")
        data = chain.read()
        n = 0
        for view in chain.writable_views():
            part = data[n:n + len(view)]
            view[:len(part)] = part
            n += len(part)
        return n

    def reset(self):
        super().reset()
        self.reset_count += 1


@pytest.fixture
def env():
    memory = GuestMemory.create([(0, 0x100000)])
    irq = EventFdLine()
    dev = EchoDevice()
    mmio = VirtioMmioDevice(dev, memory, irq)
    driver = MmioDriver(mmio, memory, RING)
    yield memory, irq, dev, mmio, driver
    mmio.close()
    irq.close()
    memory.close()


def wait_irq(irq, timeout=5.0):
    poller = select.poll()
    poller.register(irq.fileno(), select.POLLIN)
    assert poller.poll(timeout * 1000), "no interrupt"
    return irq.read()


def echo(memory, ring, payload):
    memory.write(DATA, payload)
    head = ring.add_chain([(DATA, len(payload), False), (DATA + 0x1000, 64, True)])
    ring.publish(head)
    return head


def test_identification(env):
    _, _, _, mmio, d = env
    assert d.r(M.VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976
    assert d.r(M.VIRTIO_MMIO_VERSION) == 2
    assert d.r(M.VIRTIO_MMIO_DEVICE_ID) == 42
    assert d.r(M.VIRTIO_MMIO_VENDOR_ID) == EchoDevice.vendor_id
    assert d.r(M.VIRTIO_MMIO_STATUS) == 0
    assert d.device_features() == bit(32) | bit(29) | bit(FEATURE_X)
    d.w(M.VIRTIO_MMIO_SHM_SEL, 0)
    assert d.r(M.VIRTIO_MMIO_SHM_LEN_LOW) == d.r(M.VIRTIO_MMIO_SHM_LEN_HIGH) == 0xFFFFFFFF
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 1)
    assert d.r(M.VIRTIO_MMIO_QUEUE_NUM_MAX) == 8
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 2)
    assert d.r(M.VIRTIO_MMIO_QUEUE_NUM_MAX) == 0  # no such queue


def test_linux_sequence_and_echo_via_bus(env):
    memory, irq, dev, mmio, d = env
    accepted = d.init(num_queues=2)
    assert d.status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert dev.acked_features == accepted
    assert mmio.transport.active
    ring = d.rings[0]
    head = echo(memory, ring, b"ping")
    d.kick(0)  # a QueueNotify that reaches the bus is forwarded to the worker
    assert wait_irq(irq) >= 1
    assert ring.wait_used() == [(head, 4)]
    assert memory.read(DATA + 0x1000, 4) == b"ping"
    assert d.ack_interrupts() == InterruptKind.USED_BUFFER
    assert d.r(M.VIRTIO_MMIO_INTERRUPT_STATUS) == 0
    assert dev.threads == {mmio.transport.name}  # served on the worker, not this thread


def test_notify_through_eventfd(env):
    memory, irq, dev, mmio, d = env
    d.init(num_queues=2)
    fds = mmio.notify_eventfds()
    assert len(fds) == 2
    ring = d.rings[1]
    head = echo(memory, ring, b"queue one")
    os.eventfd_write(fds[1], 1)  # what KVM does for an ioeventfd with datamatch=1
    wait_irq(irq)
    assert ring.wait_used() == [(head, 9)]


def test_notification_before_driver_ok_is_kept(env):
    memory, irq, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER)
    d.write_features(dev.device_features)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK)
    ring = d.setup_queue(0, RING)
    d.rings.append(ring)
    head = echo(memory, ring, b"early")
    d.kick(0)
    time.sleep(0.05)
    assert ring.take_used() == []
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert ring.wait_used() == [(head, 5)]


@pytest.mark.parametrize("features", [
    bit(FEATURE_X),                          # no VIRTIO_F_VERSION_1
    bit(VIRTIO_F_VERSION_1) | bit(7),        # a feature the device did not offer
])
def test_features_refused(env, features):
    _, _, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER)
    d.write_features(features)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK)
    assert d.status() == ACK | DRIVER  # §3.1.1 step 6: FEATURES_OK not set
    assert dev.acked_features == 0


def test_feature_writes_after_features_ok_ignored(env):
    _, _, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER)
    d.write_features(bit(VIRTIO_F_VERSION_1))
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK)
    d.write_features(dev.device_features)
    assert mmio.transport.driver_features == bit(VIRTIO_F_VERSION_1)
    assert dev.acked_features == bit(VIRTIO_F_VERSION_1)


@pytest.mark.parametrize("sequence", [
    [DRIVER],                                    # DRIVER before ACKNOWLEDGE
    [ACK, ACK | FEATURES_OK],                    # FEATURES_OK before DRIVER
    [ACK, ACK | DRIVER, ACK | DRIVER | DRIVER_OK],  # DRIVER_OK before FEATURES_OK
    [ACK, ACK | DRIVER, ACK],                    # clearing a bit
    [ACK, ACK | 0x10],                           # an unknown bit
])
def test_illegal_status_sequences(env, sequence):
    _, _, dev, mmio, d = env
    before = None
    for value in sequence:
        before = d.status()
        d.w(M.VIRTIO_MMIO_STATUS, value)
    assert d.status() == before  # the illegal write changed nothing
    assert mmio.transport.illegal_access_count == 1
    assert not mmio.transport.active


def test_failed_then_only_reset(env):
    _, _, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | FAILED)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | FAILED | DRIVER)
    assert d.status() == ACK | FAILED
    d.w(M.VIRTIO_MMIO_STATUS, 0)
    assert d.status() == 0
    d.init()
    assert d.status() & DRIVER_OK


def test_status_machine_directly():
    s = DeviceStatus()
    assert s.write(ACK) == ACK
    assert s.write(ACK | DRIVER) == DRIVER
    with pytest.raises(StatusError, match="DRIVER_OK set before FEATURES_OK"):
        s.write(ACK | DRIVER | DRIVER_OK)
    s.set_needs_reset()
    # The driver's write need not repeat the device-owned NEEDS_RESET bit.
    assert s.write(ACK | DRIVER | FEATURES_OK) == FEATURES_OK
    assert s.value & NEEDS_RESET


def test_queue_num_above_max_needs_reset(env):
    _, _, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER)
    d.write_features(dev.device_features)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK)
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 0)
    d.w(M.VIRTIO_MMIO_QUEUE_NUM, 32)
    d.w(M.VIRTIO_MMIO_QUEUE_DESC_LOW, RING)
    d.w(M.VIRTIO_MMIO_QUEUE_AVAIL_LOW, RING + 0x1000)
    d.w(M.VIRTIO_MMIO_QUEUE_USED_LOW, RING + 0x2000)
    d.w(M.VIRTIO_MMIO_QUEUE_READY, 1)
    assert d.r(M.VIRTIO_MMIO_QUEUE_READY) == 0
    assert d.status() & NEEDS_RESET


@pytest.mark.parametrize("desc,avail,used", [
    (RING + 8, RING + 0x1000, RING + 0x2000),      # misaligned descriptor table
    (RING, RING + 0x1000, 0x100000 - 8),           # used ring runs off RAM
    (0x1_0000_0000, RING + 0x1000, RING + 0x2000),  # high half set: not RAM
])
def test_bad_ring_addresses_refused(env, desc, avail, used):
    _, _, dev, mmio, d = env
    d.w(M.VIRTIO_MMIO_STATUS, ACK)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER)
    d.write_features(dev.device_features)
    d.w(M.VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK)
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 0)
    d.w(M.VIRTIO_MMIO_QUEUE_NUM, 16)
    for low, value in ((M.VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
                       (M.VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
                       (M.VIRTIO_MMIO_QUEUE_USED_LOW, used)):
        d.w(low, value & 0xFFFFFFFF)
        d.w(low + 4, value >> 32)
    d.w(M.VIRTIO_MMIO_QUEUE_READY, 1)
    assert d.r(M.VIRTIO_MMIO_QUEUE_READY) == 0
    assert d.status() & NEEDS_RESET


def test_queue_registers_locked_while_ready(env):
    _, _, dev, mmio, d = env
    d.init()
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 0)
    d.w(M.VIRTIO_MMIO_QUEUE_NUM, 4)
    d.w(M.VIRTIO_MMIO_QUEUE_DESC_LOW, 0)
    assert mmio.transport.queue_configs[0].size == 16
    assert mmio.transport.queue_configs[0].desc_table == RING



def test_driver_stops_using_a_live_queue(env):
    memory, irq, dev, mmio, d = env
    d.init(num_queues=2)
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 1)
    d.w(M.VIRTIO_MMIO_QUEUE_READY, 0)  # §4.2.2.2: stop using the queue, read back 0
    assert d.r(M.VIRTIO_MMIO_QUEUE_READY) == 0
    assert dev.queues[1] is None
    echo(memory, d.rings[1], b"ignored")
    d.kick(1)
    head = echo(memory, d.rings[0], b"still served")
    d.kick(0)
    assert d.rings[0].wait_used() == [(head, 12)]
    assert d.rings[1].take_used() == []
    assert not d.status() & NEEDS_RESET


def test_odd_width_control_access_ignored(env):
    _, _, dev, mmio, d = env
    assert mmio.read(M.VIRTIO_MMIO_MAGIC_VALUE, 2) == 0
    assert mmio.read(M.VIRTIO_MMIO_MAGIC_VALUE + 1, 4) == 0
    mmio.write(M.VIRTIO_MMIO_STATUS, 1, ACK)
    assert d.status() == 0


def test_config_space(env):
    _, _, dev, mmio, d = env
    assert mmio.read(M.VIRTIO_MMIO_CONFIG, 1) == 0x11
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 2, 2) == 0x4433
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 4, 4) == 0x88776655
    assert mmio.read(M.VIRTIO_MMIO_CONFIG + 0x40, 4) == 0  # beyond the device's config
    mmio.write(M.VIRTIO_MMIO_CONFIG + 1, 1, 0xAB)
    assert dev.config[1] == 0xAB
    assert mmio.read(M.VIRTIO_MMIO_CONFIG, 3) == 0  # no 3-byte fields exist


def test_reset_stops_worker_and_clears(env):
    memory, irq, dev, mmio, d = env
    d.init(num_queues=2)
    worker = mmio.transport._worker
    assert worker.running
    d.w(M.VIRTIO_MMIO_STATUS, 0)
    assert d.status() == 0
    assert not worker.running
    assert dev.reset_count == 2  # init() itself begins with a reset, as Linux does
    assert not mmio.transport.active
    d.w(M.VIRTIO_MMIO_QUEUE_SEL, 0)
    assert d.r(M.VIRTIO_MMIO_QUEUE_READY) == 0
    # The driver can come back: a second life works.
    d.rings.clear()
    d.init(num_queues=2)
    head = echo(memory, d.rings[0], b"again")
    d.kick(0)
    assert d.rings[0].wait_used() == [(head, 5)]


def test_device_error_sets_needs_reset(env):
    memory, irq, dev, mmio, d = env
    d.init()
    dev.fail_next = True
    d.kick(0)
    wait_irq(irq)
    deadline = time.monotonic() + 5
    while not d.status() & NEEDS_RESET and time.monotonic() < deadline:
        time.sleep(0.001)
    assert d.status() & NEEDS_RESET
    assert d.ack_interrupts() & InterruptKind.CONFIG_CHANGE
    assert d.r(M.VIRTIO_MMIO_CONFIG_GENERATION) == 1
    d.w(M.VIRTIO_MMIO_STATUS, 0)
    assert d.status() == 0


def test_vmm_bug_keeps_traceback_and_needs_reset(env, caplog):
    import logging
    memory, irq, dev, mmio, d = env
    caplog.set_level(logging.DEBUG, logger="xvm")
    d.init()
    dev.bug_next = True
    echo(memory, d.rings[0], b"boom")
    d.kick(0)
    deadline = time.monotonic() + 5
    while not d.status() & NEEDS_RESET:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert dev.broken
    bugs = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(bugs) == 1 and bugs[0].exc_info is not None
    assert "VMM bug" in bugs[0].getMessage()
    dev.bug_next = False
    d.rings.clear()
    d.init()  # a reset brings it back
    head = echo(memory, d.rings[0], b"fine")
    d.kick(0)
    assert d.rings[0].wait_used() == [(head, 4)]


def test_notify_of_missing_queue_is_ignored(env):
    _, _, dev, mmio, d = env
    d.init()
    d.kick(7)
    assert mmio.transport.illegal_access_count == 1


def test_save_restore(env):
    memory, irq, dev, mmio, d = env
    d.init(num_queues=2)
    ring = d.rings[0]
    echo(memory, ring, b"one")
    d.kick(0)
    ring.wait_used()
    state = mmio.save()
    data = state.save()
    # A fresh transport over the same memory picks up where the first stopped.
    mmio.transport.reset()
    dev2 = EchoDevice()
    mmio2 = VirtioMmioDevice(dev2, memory, irq)
    try:
        mmio2.restore(type(state).restore(data))
        assert mmio2.read(M.VIRTIO_MMIO_STATUS, 4) & DRIVER_OK
        assert dev2.queues[0].next_avail == 1
        head = echo(memory, ring, b"two")
        mmio2.write(M.VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0)
        assert ring.wait_used() == [(head, 3)]
    finally:
        mmio2.close()


@pytest.mark.parametrize("kick_taken", [False, True], ids=["kick-pending", "kick-taken"])
def test_pause_holds_notifications_until_resume(env, kick_taken):
    """A request the guest makes available while paused is served on resume, also when its
    kick was already taken from the eventfd by the stopping worker (a pause for a save or a
    switchover that then failed): resuming looks at every queue once."""
    memory, irq, dev, mmio, d = env
    d.init()
    mmio.pause()
    ring = d.rings[0]
    head = echo(memory, ring, b"held")
    d.kick(0)
    time.sleep(0.05)
    assert ring.take_used() == []
    state = mmio.save()
    assert state.transport.active_queues[0].next_avail == 0
    if kick_taken:
        drain_eventfd(mmio.transport.notify_eventfds()[0])
    mmio.resume()
    assert ring.wait_used() == [(head, 4)]


def test_a_kick_pending_at_save_is_served_after_restore(env):
    """The guest kicked while the machine was paused for the save: the kick sat on the old
    transport's eventfd, which the state does not carry.  The restored device looks at every
    queue once, so the request is served, not left waiting for a kick that came already."""
    memory, irq, dev, mmio, d = env
    d.init()
    mmio.pause()
    ring = d.rings[0]
    head = echo(memory, ring, b"kicked before the save")
    d.kick(0)
    state = mmio.save()
    data = state.save()
    mmio.transport.reset()
    mmio2 = VirtioMmioDevice(EchoDevice(), memory, irq)
    try:
        mmio2.restore(type(state).restore(data))
        assert ring.wait_used() == [(head, 22)]
    finally:
        mmio2.close()


def test_level_triggered_resample(env):
    memory, _, _, _, _ = env
    irq = EventFdLine()
    resample = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    dev = EchoDevice()
    mmio = VirtioMmioDevice(dev, memory, irq, resample_fd=resample)
    try:
        d = MmioDriver(mmio, memory, RING)
        d.init()
        echo(memory, d.rings[0], b"x")
        d.kick(0)
        wait_irq(irq)
        # The guest EOIs without acking InterruptStatus: KVM signals the resamplefd
        # and the line must be raised again.
        os.eventfd_write(resample, 1)
        wait_irq(irq)
        d.ack_interrupts()
        os.eventfd_write(resample, 1)
        time.sleep(0.05)
        assert irq.read() == 0
    finally:
        mmio.close()
        irq.close()
        os.close(resample)

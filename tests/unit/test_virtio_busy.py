"""Control requests against a guest that keeps its block queue full.

A hostile guest keeps hundreds of 1 MiB reads in flight, resubmitting each as
it completes, while another vCPU resets the device, stops using the queue or
the host pauses the domain.  Each must return within 100 ms (asserted with a
generous bound for a loaded 2-core machine; the measured time is printed),
never raise, and leave the worker stopped and the disk intact.  Real
eventfds, a real file disk, a real worker thread.
"""
import hashlib
import os
import struct
import threading
import time

import pytest

from xvm.devices.block import Disk, VirtioBlock
from xvm.devices.block.request import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN
from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import EventFdLine
from xvm.devices.virtio.testing import MmioDriver
from xvm.kvm.memory import GuestMemory

MIB = 1 << 20
DISK_SIZE = 64 * MIB
QUEUE_SIZE = 256
RING = 0x10000
TABLES = 0x20000  # one 3-descriptor indirect table (48 bytes) per request, 64 apart
HEADERS = 0x30000  # 16 bytes per request
STATUS = 0x31000  # 1 byte per request
DATA = 0x100000  # 16 data buffers of 1 MiB, shared round-robin by the requests
DATA_BUFFERS = 16
MEMORY_SIZE = DATA + DATA_BUFFERS * MIB
BOUND = 0.5  # seconds; the goal is 100 ms


def _pattern_disk(path):
    block = hashlib.sha256(b"xvm").digest() * (MIB // 32)
    with open(path, "wb") as f:
        for i in range(DISK_SIZE // MIB):
            f.write(bytes([i]) + block[1:])
    return _digest(path)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Flooder:
    """The hostile vCPU: fills the queue with 1 MiB reads and resubmits each as
    soon as it is used, kicking through the queue's eventfd (as KVM's
    ioeventfd would)."""

    def __init__(self, memory, ring, notify_fd):
        self.memory = memory
        self.ring = ring
        self.notify_fd = os.dup(notify_fd)  # the same eventfd, alive after close()
        self.completed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile-vcpu", daemon=True)
        for i in range(QUEUE_SIZE):
            header = HEADERS + 16 * i
            sector = (i % (DISK_SIZE // MIB)) * (MIB // 512)
            memory.write(header, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
            buffers = [(header, 16, False), (DATA + (i % DATA_BUFFERS) * MIB, MIB, True),
                       (STATUS + i, 1, True)]
            ring.publish(ring.add_indirect_chain(buffers, TABLES + 64 * i))

    def start(self):
        os.eventfd_write(self.notify_fd, 1)
        self._thread.start()

    def _run(self):
        ring = self.ring
        while not self._stop.is_set():
            used = ring.take_used()
            for head, _ in used:
                ring.publish(head)
            if used:
                self.completed += len(used)
                os.eventfd_write(self.notify_fd, 1)
            else:
                time.sleep(0)

    def wait_busy(self, count=64, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self.completed < count:
            assert time.monotonic() < deadline, f"only {self.completed} reads completed"
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()
        if self.notify_fd >= 0:
            os.close(self.notify_fd)
            self.notify_fd = -1


@pytest.fixture
def busy(tmp_path):
    path = tmp_path / "disk.img"
    digest = _pattern_disk(path)
    memory = GuestMemory.create([(0, MEMORY_SIZE)])
    irq = EventFdLine()
    dev = VirtioBlock(Disk(path), queue_size=QUEUE_SIZE)
    mmio = M.VirtioMmioDevice(dev, memory, irq, name=f"virtio-blk:{path}")
    driver = MmioDriver(mmio, memory, RING)
    driver.init()
    flooder = Flooder(memory, driver.rings[0], mmio.notify_eventfds()[0])
    try:
        yield memory, dev, mmio, driver, flooder, path, digest
    finally:
        flooder.stop()
        mmio.close()
        dev.close()
        irq.close()
        memory.close()


def _timed(what, action):
    start = time.monotonic()
    action()
    elapsed = time.monotonic() - start
    print(f"\n{what} took {elapsed * 1000:.1f} ms")
    return elapsed


def _serves_a_read(memory, mmio, path):
    """The device, initialised afresh, reads sector 2048 (MiB 1) right."""
    d = MmioDriver(mmio, memory, RING)
    d.init()
    ring = d.rings[0]
    memory.write(HEADERS, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, MIB // 512))
    memory.write(STATUS, b"\xff")
    ring.publish(ring.add_chain([(HEADERS, 16, False), (DATA, 4096, True),
                                 (STATUS, 1, True)]))
    d.kick(0)
    assert ring.wait_used() == [(0, 4097)]
    assert memory.read(STATUS, 1)[0] == VIRTIO_BLK_S_OK
    with open(path, "rb") as f:
        f.seek(MIB)
        assert memory.read(DATA, 4096) == f.read(4096)


def test_reset_under_a_full_queue(busy):
    memory, dev, mmio, driver, flooder, path, digest = busy
    flooder.start()
    flooder.wait_busy()
    worker = mmio.transport._worker
    assert worker.running
    elapsed = _timed("reset under a full queue of 1 MiB reads",
                     lambda: mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0))
    assert elapsed < BOUND
    assert not worker.running
    assert mmio.read(M.VIRTIO_MMIO_STATUS, 4) == 0
    flooder.stop()
    assert _digest(path) == digest
    _serves_a_read(memory, mmio, path)


def test_queue_ready_zero_under_a_full_queue(busy):
    memory, dev, mmio, driver, flooder, path, digest = busy
    flooder.start()
    flooder.wait_busy()
    worker = mmio.transport._worker

    def stop_using_queue():
        mmio.write(M.VIRTIO_MMIO_QUEUE_SEL, 4, 0)
        mmio.write(M.VIRTIO_MMIO_QUEUE_READY, 4, 0)

    elapsed = _timed("QueueReady=0 under a full queue of 1 MiB reads", stop_using_queue)
    assert elapsed < BOUND
    assert not worker.running
    assert mmio.read(M.VIRTIO_MMIO_QUEUE_READY, 4) == 0
    assert dev.queues[0] is None
    assert mmio.transport._worker.running  # the data plane goes on without the queue
    flooder.stop()
    served = dev.metrics.read_count
    time.sleep(0.05)
    assert dev.metrics.read_count == served  # nothing more is served from that queue
    assert _digest(path) == digest
    mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0)
    _serves_a_read(memory, mmio, path)


def test_pause_under_a_full_queue(busy):
    memory, dev, mmio, driver, flooder, path, digest = busy
    flooder.start()
    flooder.wait_busy()
    worker = mmio.transport._worker
    elapsed = _timed("pause under a full queue of 1 MiB reads", mmio.pause)
    assert elapsed < BOUND
    assert not worker.running
    # Quiesced: the rings stand still while paused.
    state = mmio.save()
    time.sleep(0.05)
    assert mmio.save() == state
    # The work a busy queue still had is picked up after resume.
    before = flooder.completed
    mmio.resume()
    flooder.wait_busy(before + 64)
    elapsed = _timed("reset after resume under a full queue of 1 MiB reads",
                     lambda: mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0))
    assert elapsed < BOUND
    flooder.stop()
    assert _digest(path) == digest
    _serves_a_read(memory, mmio, path)


def test_close_under_a_full_queue(busy):
    memory, dev, mmio, driver, flooder, path, digest = busy
    flooder.start()
    flooder.wait_busy()
    worker = mmio.transport._worker
    elapsed = _timed("close under a full queue of 1 MiB reads", mmio.close)
    assert elapsed < BOUND
    assert not worker.running
    flooder.stop()
    assert _digest(path) == digest


class HangingBackend:
    """The real file backend, except that reads wait for ``release`` (a disk
    that stopped answering)."""

    def __init__(self, backend):
        self._backend = backend
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def readv(self, offset, views):
        self.entered.set()
        self.release.wait(10)
        return self._backend.readv(offset, views)


def test_reset_with_a_hung_backend_gives_up_without_raising(tmp_path, monkeypatch):
    """A backend call that never returns: the reset waits STOP_TIMEOUT, does not
    raise, and the abandoned worker completes nothing when the call returns."""
    from xvm.devices.virtio import worker as worker_module
    monkeypatch.setattr(worker_module, "STOP_TIMEOUT", 0.1)
    path = tmp_path / "disk.img"
    digest = _pattern_disk(path)
    disk = Disk(path)
    backend = HangingBackend(disk.open())
    with GuestMemory.create([(0, MEMORY_SIZE)]) as memory:
        irq = EventFdLine()
        dev = VirtioBlock(disk, backend=backend, queue_size=QUEUE_SIZE)
        mmio = M.VirtioMmioDevice(dev, memory, irq)
        try:
            d = MmioDriver(mmio, memory, RING)
            d.init()
            ring = d.rings[0]
            memory.write(HEADERS, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
            ring.publish(ring.add_chain([(HEADERS, 16, False), (DATA, 4096, True),
                                         (STATUS, 1, True)]))
            d.kick(0)
            assert backend.entered.wait(5)
            worker = mmio.transport._worker
            elapsed = _timed("reset with a hung backend",
                             lambda: mmio.write(M.VIRTIO_MMIO_STATUS, 4, 0))
            assert 0.1 <= elapsed < 0.1 + BOUND
            assert worker.abandoned and mmio.read(M.VIRTIO_MMIO_STATUS, 4) == 0
            used_idx = ring.used_idx()
            backend.release.set()
            deadline = time.monotonic() + 5
            while worker.running:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert ring.used_idx() == used_idx  # the late completion was dropped
            assert _digest(path) == digest
        finally:
            backend.release.set()
            mmio.close()
            dev.close()
            irq.close()

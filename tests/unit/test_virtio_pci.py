"""virtio-pci (modern) driven through the host bridge the way Linux's
virtio_pci_modern probe and the virtio core do, with a fake KVM VM."""
import os
import select
import struct

import pytest

from xvm.devices.pci import PciHostBridge, GsiRouter
from xvm.devices.pci.irq import FIRST_MSI_GSI
from xvm.devices.virtio import pci as P
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    InterruptKind, VirtioDevice,
)
from xvm.devices.virtio.testing import DriverRing
from xvm.kvm.memory import GuestMemory
from xvm.kvm.vm import IrqchipRoute, MsiRoute
from xvm.machine.bus import Bus

WINDOW = (0xE100_0000, 0xF000_0000)
ECAM = 0xE000_0000
RING = 0x10000
DATA = 0x80000
MSI_ADDRESS = 0xFEE0_0000


class FakeVm:
    """Records what the transport asks of KVM."""

    def __init__(self):
        self.routing = []  # every set_gsi_routing table
        self.irqfds = {}  # fd -> gsi
        self.removed_irqfds = []
        self.ioeventfds = {}  # (address, length) -> fd
        self.ioeventfd_log = []

    def set_gsi_routing(self, routes):
        self.routing.append(list(routes))

    def irqfd(self, fd, gsi, resample_fd=None):
        self.irqfds[fd] = gsi
        if resample_fd is not None:
            self.resamplefds = getattr(self, "resamplefds", {})
            self.resamplefds[fd] = resample_fd

    def irqfd_remove(self, fd, gsi):
        self.removed_irqfds.append((fd, gsi))

    def ioeventfd(self, fd, address, length, remove=False):
        self.ioeventfd_log.append((fd, address, length, remove))
        if remove:
            assert self.ioeventfds.pop((address, length)) == fd
        else:
            assert (address, length) not in self.ioeventfds
            self.ioeventfds[(address, length)] = fd

    def msi_routes(self):
        return {r.gsi: (r.address, r.data) for r in self.routing[-1] if isinstance(r, MsiRoute)}


class EchoDevice(VirtioDevice):
    device_id = 2  # looks like a block device to the PCI side
    queue_max_sizes = (16, 8)

    def __init__(self):
        super().__init__()
        self.config = bytearray(range(16))
        # A backend event that completes work on queue 1 (like a TAP for net rx).
        self.source = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def event_sources(self):
        return ((self.source, 1, self._from_source),)

    def _from_source(self, index, batch):
        os.eventfd_read(self.source)
        batch.serve_chains(lambda chain: self.process_chain(index, chain))

    def config_space(self):
        return bytes(self.config)

    def process_chain(self, index, chain):
        data = chain.read()
        for view in chain.writable_views():
            view[:len(data)] = data[:len(view)]
        return len(data)


class Config:
    """Configuration mechanism #1, as Linux's pci_conf1_read/write."""

    def __init__(self, pio, devfn):
        self.pio, self.devfn = pio, devfn

    def _select(self, reg):
        self.pio.write(0xCF8, 4, 0x8000_0000 | self.devfn << 8 | (reg & 0xFC))

    def read(self, reg, size=4):
        self._select(reg)
        return self.pio.read(0xCFC + (reg & 3), size)

    def write(self, reg, size, value):
        self._select(reg)
        self.pio.write(0xCFC + (reg & 3), size, value)


@pytest.fixture
def env(request):
    intx_gsi = getattr(request, "param", None)
    memory = GuestMemory.create([(0, 0x100000)])
    vm = FakeVm()
    router = GsiRouter(vm)
    mmio, pio = Bus("MMIO"), Bus("PIO")
    bridge = PciHostBridge(mmio, window=WINDOW, ecam_base=ECAM)
    bridge.register(pio)
    dev = EchoDevice()
    function = P.VirtioPciDevice(dev, memory, router=router, irqfd=vm.irqfd,
                                 irqfd_remove=vm.irqfd_remove, ioeventfd=vm.ioeventfd,
                                 intx_gsi=intx_gsi)
    slot = bridge.add(function)
    yield memory, vm, mmio, pio, bridge, function, Config(pio, slot << 3)
    function.close()
    os.close(dev.source)
    memory.close()


def find_virtio_caps(cfg):
    """virtio_pci_find_capability: walk the list, keep vendor caps by cfg_type."""
    assert cfg.read(0x06, 2) & 0x10  # PCI_STATUS_CAP_LIST
    caps, msix, seen = {}, None, set()
    pos = cfg.read(0x34, 1)
    while pos:
        assert pos not in seen and pos >= 0x40 and pos % 4 == 0
        seen.add(pos)
        cap_id = cfg.read(pos, 1)
        if cap_id == 0x09:
            cfg_type, bar = cfg.read(pos + 3, 1), cfg.read(pos + 4, 1)
            caps.setdefault(cfg_type, (pos, bar, cfg.read(pos + 8), cfg.read(pos + 12)))
        elif cap_id == 0x11:
            msix = pos
        pos = cfg.read(pos + 1, 1)
    return caps, msix


def size_bar(cfg, index):
    reg = 0x10 + 4 * index
    old = cfg.read(reg)
    cfg.write(reg, 4, 0xFFFF_FFFF)
    mask = cfg.read(reg)
    cfg.write(reg, 4, old)
    return old & ~0xF, (~(mask & ~0xF) + 1) & 0xFFFF_FFFF


class Driver:
    """virtio_pci_modern + virtio core over the mapped BAR."""

    def __init__(self, mmio, base, caps):
        self.mmio, self.base = mmio, base
        self.common = base + caps[P.VIRTIO_PCI_CAP_COMMON_CFG][2]
        self.isr = base + caps[P.VIRTIO_PCI_CAP_ISR_CFG][2]
        self.device = base + caps[P.VIRTIO_PCI_CAP_DEVICE_CFG][2]
        self.notify = base + caps[P.VIRTIO_PCI_CAP_NOTIFY_CFG][2]

    def r(self, off, size):
        return self.mmio.read(self.common + off, size)

    def w(self, off, size, value):
        self.mmio.write(self.common + off, size, value)


def probe(env, *, vectors=True):
    memory, vm, mmio, pio, bridge, function, cfg = env
    assert cfg.read(0x00, 2) == 0x1AF4 and cfg.read(0x02, 2) == 0x1042
    assert cfg.read(0x08, 1) >= 1  # revision: non-transitional
    assert cfg.read(0x0B, 1) == 0x01  # mass storage class for virtio-blk
    assert cfg.read(0x2C, 2) == 0x1AF4 and cfg.read(0x2E, 2) >= 0x40
    caps, msix = find_virtio_caps(cfg)
    assert {1, 2, 3, 4, 5} <= set(caps)
    base, size = size_bar(cfg, 0)
    assert size == P.BAR0_SIZE and WINDOW[0] <= base < WINDOW[1]
    for cfg_type in (1, 2, 3, 4):
        _, bar, offset, length = caps[cfg_type]
        assert bar == 0 and offset + length <= size
    cfg.write(0x04, 2, cfg.read(0x04, 2) | 0x6)  # memory + bus master
    d = Driver(mmio, base, caps)
    d.msix = msix
    return d


def enable_msix(env, d, vectors):
    memory, vm, mmio, pio, bridge, function, cfg = env
    control = cfg.read(d.msix + 2, 2)
    count = (control & 0x7FF) + 1
    table = cfg.read(d.msix + 4)
    bir, offset = table & 7, table & ~7
    table_base = cfg.read(0x10 + 4 * bir) & ~0xF
    cfg.write(d.msix + 2, 2, control | 0xC000)  # enable + function mask while programming
    for i in range(min(vectors, count)):
        entry = table_base + offset + 16 * i
        mmio.write(entry + 0, 4, MSI_ADDRESS)
        mmio.write(entry + 4, 4, 0)
        mmio.write(entry + 8, 4, 0x30 + i)
        mmio.write(entry + 12, 4, 0)  # unmask
    cfg.write(d.msix + 2, 2, (control | 0x8000) & ~0x4000)
    return count, table_base + offset


def init_device(env, d, vectors=True):
    memory = env[0]
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, 0)
    assert d.r(P.VIRTIO_PCI_COMMON_STATUS, 1) == 0
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, ACK)
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, ACK | DRIVER)
    d.w(P.VIRTIO_PCI_COMMON_DFSELECT, 4, 1)
    high = d.r(P.VIRTIO_PCI_COMMON_DF, 4)
    assert high & 1  # VIRTIO_F_VERSION_1
    d.w(P.VIRTIO_PCI_COMMON_GFSELECT, 4, 1)
    d.w(P.VIRTIO_PCI_COMMON_GF, 4, 1)
    d.w(P.VIRTIO_PCI_COMMON_GFSELECT, 4, 0)
    d.w(P.VIRTIO_PCI_COMMON_GF, 4, 0)
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, ACK | DRIVER | FEATURES_OK)
    assert d.r(P.VIRTIO_PCI_COMMON_STATUS, 1) & FEATURES_OK
    if vectors:
        d.w(P.VIRTIO_PCI_COMMON_MSIX, 2, 0)
        assert d.r(P.VIRTIO_PCI_COMMON_MSIX, 2) == 0
    num = d.r(P.VIRTIO_PCI_COMMON_NUMQ, 2)
    rings = []
    for q in range(num):
        d.w(P.VIRTIO_PCI_COMMON_Q_SELECT, 2, q)
        size = d.r(P.VIRTIO_PCI_COMMON_Q_SIZE, 2)
        ring = DriverRing(memory, RING + q * 0x8000, size)
        d.w(P.VIRTIO_PCI_COMMON_Q_DESCLO, 4, ring.desc_table)
        d.w(P.VIRTIO_PCI_COMMON_Q_DESCHI, 4, 0)
        d.w(P.VIRTIO_PCI_COMMON_Q_AVAILLO, 4, ring.avail_ring)
        d.w(P.VIRTIO_PCI_COMMON_Q_AVAILHI, 4, 0)
        d.w(P.VIRTIO_PCI_COMMON_Q_USEDLO, 4, ring.used_ring)
        d.w(P.VIRTIO_PCI_COMMON_Q_USEDHI, 4, 0)
        if vectors:
            d.w(P.VIRTIO_PCI_COMMON_Q_MSIX, 2, q + 1)
            assert d.r(P.VIRTIO_PCI_COMMON_Q_MSIX, 2) == q + 1
        ring.notify_off = d.r(P.VIRTIO_PCI_COMMON_Q_NOFF, 2)
        d.w(P.VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1)
        rings.append(ring)
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    return rings


def wait_fd(fd, timeout=5.0):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(timeout * 1000), "no interrupt"
    return os.eventfd_read(fd)


def test_linux_probe_msix_and_echo(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    # Memory decoding on: BAR 0 is on the bus and each queue's notify address has an ioeventfd.
    notify_mult = cfg.read(find_virtio_caps(cfg)[0][2][0] + 16)
    assert notify_mult == P.NOTIFY_OFF_MULTIPLIER
    count, table = enable_msix(env, d, vectors=3)
    assert count == 3  # two queues + config
    rings = init_device(env, d)
    fds = function.notify_eventfds()
    for q, ring in enumerate(rings):
        assert vm.ioeventfds[(d.notify + ring.notify_off * notify_mult, 2)] == fds[q]
    # Every vector has a GSI with an irqfd and a route to its message; the default
    # IOAPIC/PIC routes are in the same table.
    routes = vm.msi_routes()
    gsis = sorted(vm.irqfds.values())
    assert gsis == [FIRST_MSI_GSI, FIRST_MSI_GSI + 1, FIRST_MSI_GSI + 2]
    assert routes == {gsi: (MSI_ADDRESS, 0x30 + i) for i, gsi in enumerate(gsis)}
    irqchip = [r for r in vm.routing[-1] if isinstance(r, IrqchipRoute)]
    assert {r.gsi for r in irqchip} == set(range(24))
    # A request on queue 1, notified the way KVM does for the ioeventfd.
    memory.write(DATA, b"over pci")
    ring = rings[1]
    head = ring.add_chain([(DATA, 8, False), (DATA + 0x1000, 64, True)])
    ring.publish(head)
    os.eventfd_write(fds[1], 1)
    fd_by_gsi = {gsi: fd for fd, gsi in vm.irqfds.items()}
    assert wait_fd(fd_by_gsi[gsis[2]]) >= 1  # queue 1 -> vector 2
    assert ring.wait_used() == [(head, 8)]
    assert memory.read(DATA + 0x1000, 8) == b"over pci"
    assert mmio.read(d.isr, 1) == 0  # with MSI-X on, the ISR is not used
    # A notify that reaches the bus (no ioeventfd match: a 4-byte write) is served too.
    head = ring.add_chain([(DATA, 8, False), (DATA + 0x2000, 64, True)])
    ring.publish(head)
    mmio.write(d.notify + ring.notify_off * notify_mult, 4, 1)
    assert wait_fd(fd_by_gsi[gsis[2]]) >= 1
    # Device config reads through BAR 0.
    assert mmio.read(d.device + 4, 4) == struct.unpack("<I", bytes(range(4, 8)))[0]
    # Config change goes to the config vector.
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    assert wait_fd(fd_by_gsi[gsis[0]]) == 1


def _pending(fd):
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_used_buffer_signals_only_its_queue_vector(env):
    """An interrupt names its queue: a used buffer on queue 1 fires queue 1's
    vector and no other, whether the work came from the queue's notification
    or from a device event source (a TAP becoming readable)."""
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    enable_msix(env, d, vectors=3)
    rings = init_device(env, d)  # config -> vector 0, queue 0 -> 1, queue 1 -> 2
    fd_by_vector = {gsi - FIRST_MSI_GSI: fd for fd, gsi in vm.irqfds.items()}
    ring = rings[1]
    memory.write(DATA, b"event")
    for round_ in range(3):
        head = ring.add_chain([(DATA, 5, False), (DATA + 0x1000, 64, True)])
        ring.publish(head)
        if round_ == 0:
            os.eventfd_write(function.notify_eventfds()[1], 1)  # the queue's notification
        else:
            os.eventfd_write(function.device.source, 1)  # the backend's event
        assert ring.wait_used() == [(head, 5)]
        assert wait_fd(fd_by_vector[2]) == 1
    # Nothing reached queue 0's vector or the config vector.
    assert _pending(fd_by_vector[1]) == 0
    assert _pending(fd_by_vector[0]) == 0
    # The transport routes by the queue named, from any thread.
    function.transport.raise_interrupt(InterruptKind.USED_BUFFER, 0)
    assert wait_fd(fd_by_vector[1]) == 1
    assert _pending(fd_by_vector[2]) == 0


def test_masked_vector_sets_pending_and_fires_on_unmask(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    count, table = enable_msix(env, d, vectors=3)
    init_device(env, d)
    fd_by_gsi = {gsi: fd for fd, gsi in vm.irqfds.items()}
    config_fd = fd_by_gsi[FIRST_MSI_GSI]
    mmio.write(table + 12, 4, 1)  # mask vector 0
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(config_fd)
    pba = table + function.msix.pba_offset
    assert mmio.read(pba, 4) & 1
    mmio.write(table + 12, 4, 0)
    assert os.eventfd_read(config_fd) == 1
    assert mmio.read(pba, 4) & 1 == 0
    # Function mask holds everything back the same way.
    control = cfg.read(d.msix + 2, 2)
    cfg.write(d.msix + 2, 2, control | 0x4000)
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(config_fd)
    cfg.write(d.msix + 2, 2, control & ~0x4000)
    assert os.eventfd_read(config_fd) == 1


def test_msix_table_reprogramming_updates_routes(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    count, table = enable_msix(env, d, vectors=1)
    assert vm.msi_routes() == {FIRST_MSI_GSI: (MSI_ADDRESS, 0x30)}
    updates = len(vm.routing)
    # Linux changes affinity: mask, write the new message, unmask.
    mmio.write(table + 12, 4, 1)
    mmio.write(table + 0, 4, MSI_ADDRESS | 0x1000)
    mmio.write(table + 8, 4, 0x41)
    mmio.write(table + 12, 4, 0)
    assert vm.msi_routes() == {FIRST_MSI_GSI: (MSI_ADDRESS | 0x1000, 0x41)}
    assert len(vm.routing) == updates + 1
    # A message outside the LAPIC window is not routed at all.
    mmio.write(table + 12, 4, 1)
    mmio.write(table + 0, 4, 0x1234_0000)
    mmio.write(table + 12, 4, 0)
    assert vm.msi_routes() == {}
    assert {r.gsi for r in vm.routing[-1]} == set(range(24))
    # Reads of the table see what was written; the reserved address bits read as 0.
    mmio.write(table + 0, 4, MSI_ADDRESS | 3)
    assert mmio.read(table + 0, 4) == MSI_ADDRESS
    assert mmio.read(table + 8, 4) == 0x41


def test_bad_vectors_read_back_no_vector(env):
    d = probe(env)
    enable_msix(env, d, vectors=3)
    d.w(P.VIRTIO_PCI_COMMON_MSIX, 2, 7)
    assert d.r(P.VIRTIO_PCI_COMMON_MSIX, 2) == P.VIRTIO_MSI_NO_VECTOR
    d.w(P.VIRTIO_PCI_COMMON_Q_SELECT, 2, 5)  # no such queue
    assert d.r(P.VIRTIO_PCI_COMMON_Q_SIZE, 2) == 0
    d.w(P.VIRTIO_PCI_COMMON_Q_MSIX, 2, 1)
    assert d.r(P.VIRTIO_PCI_COMMON_Q_MSIX, 2) == P.VIRTIO_MSI_NO_VECTOR


def test_isr_without_msix(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    init_device(env, d, vectors=False)
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    assert mmio.read(d.isr, 1) == P.VIRTIO_ISR_CONFIG
    assert mmio.read(d.isr, 1) == 0  # read clears


def test_illegal_common_accesses_are_ignored(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    t = function.transport
    before = t.illegal_access_count
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 4, 0xFFFF_FFFF)  # wrong width
    assert t.status.value == 0
    assert d.r(P.VIRTIO_PCI_COMMON_NUMQ, 4) == 0  # wrong width reads 0
    d.w(P.VIRTIO_PCI_COMMON_NUMQ, 2, 9)  # read-only
    assert d.r(P.VIRTIO_PCI_COMMON_NUMQ, 2) == 2
    d.w(P.VIRTIO_PCI_COMMON_STATUS, 1, DRIVER_OK)  # out of order
    assert d.r(P.VIRTIO_PCI_COMMON_STATUS, 1) == 0
    d.w(P.VIRTIO_PCI_COMMON_Q_ENABLE, 2, 0)
    mmio.write(d.notify + 2, 2, 0)  # between queues' notify addresses
    mmio.write(d.notify + 4 * 50, 2, 0)  # beyond the last queue
    assert t.illegal_access_count >= before + 6
    # Queue settings are frozen once the queue is enabled.
    rings = init_device(env, d)
    d.w(P.VIRTIO_PCI_COMMON_Q_SELECT, 2, 0)
    d.w(P.VIRTIO_PCI_COMMON_Q_SIZE, 2, 2)
    assert d.r(P.VIRTIO_PCI_COMMON_Q_SIZE, 2) == rings[0].size


def test_pci_cfg_capability_window(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    caps, _ = find_virtio_caps(cfg)
    pos = caps[P.VIRTIO_PCI_CAP_PCI_CFG][0]
    cfg.write(pos + 4, 1, 0)  # bar 0
    cfg.write(pos + 8, 4, P.COMMON_OFFSET + P.VIRTIO_PCI_COMMON_NUMQ)
    cfg.write(pos + 12, 4, 2)
    assert cfg.read(pos + 16) & 0xFFFF == 2  # num_queues through config space
    cfg.write(pos + 8, 4, P.COMMON_OFFSET + P.VIRTIO_PCI_COMMON_STATUS)
    cfg.write(pos + 12, 4, 1)
    cfg.write(pos + 16, 1, ACK)
    assert function.transport.status.value == ACK
    cfg.write(pos + 12, 4, 3)  # illegal length: nothing happens
    cfg.write(pos + 16, 1, 0)
    assert function.transport.status.value == ACK


def test_moving_bar0_moves_notify_ioeventfds(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    old = sorted(vm.ioeventfds)
    assert len(old) == 2
    cfg.write(0x04, 2, 0)  # memory decoding off: BAR and ioeventfds go away
    assert vm.ioeventfds == {}
    assert mmio.find(d.base)[0] is None
    new_base = 0xE800_0000
    cfg.write(0x10, 4, new_base)
    cfg.write(0x04, 2, 0x2)
    assert sorted(vm.ioeventfds) == [(a - d.base + new_base, n) for a, n in old]
    assert mmio.find(new_base)[0] is not None
    assert mmio.read(new_base + P.VIRTIO_PCI_COMMON_NUMQ, 2) == 2
    # A BAR moved outside the window (or onto another BAR) decodes nothing.
    cfg.write(0x10, 4, 0x1000_0000)
    assert vm.ioeventfds == {} and mmio.find(0x1000_0000)[0] is None
    msix_base = cfg.read(0x14) & ~0xF
    cfg.write(0x10, 4, msix_base)
    assert vm.ioeventfds == {}
    assert mmio.find(msix_base)[0] is function.msix.region


def test_close_releases_vectors(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    enable_msix(env, d, vectors=3)
    function.close()
    assert len(vm.removed_irqfds) == 3
    assert vm.msi_routes() == {}


@pytest.mark.parametrize("env", [23], indirect=True)
def test_intx_fallback_when_msix_is_off(env):
    memory, vm, mmio, pio, bridge, function, cfg = env
    assert cfg.read(0x3D, 1) == 1  # INTA#
    (intx_fd, resample_fd), = vm.resamplefds.items()
    assert vm.irqfds[intx_fd] == 23
    d = probe(env)
    init_device(env, d, vectors=False)
    assert cfg.read(0x06, 2) & 0x08 == 0
    function.transport.raise_interrupt(InterruptKind.USED_BUFFER)
    assert os.eventfd_read(intx_fd) == 1
    assert cfg.read(0x06, 2) & 0x08  # Interrupt Status while the ISR is set
    # KVM's resampler at EOI: the line is re-asserted while the ISR is non-zero.
    function.transport.resample()
    assert os.eventfd_read(intx_fd) == 1
    assert mmio.read(d.isr, 1) == P.VIRTIO_ISR_QUEUE
    function.transport.resample()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(intx_fd)
    assert cfg.read(0x06, 2) & 0x08 == 0
    # Interrupt Disable in the command register keeps INTA# quiet.
    cfg.write(0x04, 2, cfg.read(0x04, 2) | 0x400)
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(intx_fd)
    cfg.write(0x04, 2, cfg.read(0x04, 2) & ~0x400)
    # With MSI-X on, INTx is never used.
    mmio.read(d.isr, 1)
    enable_msix(env, d, vectors=3)
    function.transport.raise_interrupt(InterruptKind.CONFIG_CHANGE)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(intx_fd)
    function.close()
    assert (intx_fd, 23) in vm.removed_irqfds


def test_no_intx_pin_without_a_gsi(env):
    assert env[6].read(0x3D, 1) == 0


def test_save_and_restore_into_a_new_function(env):
    import json

    memory, vm, mmio, pio, bridge, function, cfg = env
    d = probe(env)
    enable_msix(env, d, vectors=3)
    rings = init_device(env, d)
    function.pause()
    state = P.VirtioPciState.restore(json.loads(json.dumps(function.save().save())))
    assert state == function.save()
    function.close()
    # A second machine: fresh bus, fresh VM, same memory.
    vm2, mmio2, pio2 = FakeVm(), Bus("MMIO"), Bus("PIO")
    bridge2 = PciHostBridge(mmio2, window=WINDOW, ecam_base=ECAM)
    bridge2.register(pio2)
    f2 = P.VirtioPciDevice(EchoDevice(), memory, router=GsiRouter(vm2), irqfd=vm2.irqfd,
                           irqfd_remove=vm2.irqfd_remove, ioeventfd=vm2.ioeventfd)
    slot = bridge2.add(f2)
    try:
        f2.restore(state)
        cfg2 = Config(pio2, slot << 3)
        for reg in range(0, 0x100, 4):
            assert cfg2.read(reg) == cfg.read(reg), hex(reg)
        assert sorted(vm2.msi_routes().values()) == [(MSI_ADDRESS, 0x30 + i) for i in range(3)]
        assert set(vm2.ioeventfds) == set(vm.ioeventfds)  # same BAR 0, same notify addresses
        assert mmio2.read(d.base + P.VIRTIO_PCI_COMMON_NUMQ, 2) == 2
        assert f2.transport.active and f2.transport.queue_vectors == [1, 2]
        ring = rings[0]
        memory.write(DATA, b"restored")
        head = ring.add_chain([(DATA, 8, False), (DATA + 0x3000, 64, True)])
        ring.publish(head)
        os.eventfd_write(f2.notify_eventfds()[0], 1)
        fd_by_gsi = {gsi: fd for fd, gsi in vm2.irqfds.items()}
        assert wait_fd(fd_by_gsi[FIRST_MSI_GSI + 1]) >= 1
        assert memory.read(DATA + 0x3000, 8) == b"restored"
    finally:
        f2.close()

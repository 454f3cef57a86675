"""Fuzz targets for the virtio transports' register files, as a hostile guest drives
them: the virtio-mmio window, and the virtio-pci common configuration with its MSI-X
table and PCI configuration space.  Each example starts from a device the way Linux
sets it up (rings in guest RAM, DRIVER_OK) about half the time, then makes random
accesses anywhere in the window; every read must fit its size, nothing may raise,
and closing the device (its worker stopped) must finish.  Bounded like the rest of
tests/fuzz (``conftest.examples``; a hang fails through pytest-timeout)."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, replay
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, EventFdLine, VirtioDevice,
)
from xvm.kvm.memory import GuestMemory

RAM = 0x100000
RING = 0x10000
SIZES = st.sampled_from([1, 2, 4])
VALUES = st.one_of(st.integers(0, 0xFFFF_FFFF), st.sampled_from([0, 1, 0xFF, 0xFFFF, RING, RING + 0x1000,
                                                                  RAM - 4, 0x8000_0000, 0xFFFF_FFFF]))
STATUS_OK = (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
             | VIRTIO_CONFIG_S_DRIVER_OK)


class EchoDevice(VirtioDevice):
    """Two queues; every chain's readable bytes are copied into its writable ones."""

    device_id = 2
    queue_max_sizes = (16, 8)

    def config_space(self):
        return bytes(range(16))

    def process_chain(self, index, chain):
        data = chain.read()
        n = 0
        for view in chain.writable_views():
            part = data[n:n + len(view)]
            view[:len(part)] = part
            n += len(part)
        return n


def fits(value, size):
    return isinstance(value, int) and 0 <= value < 1 << (8 * size)


def mask(value, size):
    return value & ((1 << (8 * size)) - 1)


# --- virtio-mmio -------------------------------------------------------------------------------

MMIO_ACCESS = st.tuples(st.one_of(st.integers(0, 0x1FF), st.sampled_from(
    [0x30, 0x34, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0x84, 0x90, 0x94, 0xA0, 0xA4, 0x100])),
    SIZES, st.booleans(), VALUES)


@replay("virtio_mmio")
@settings(FUZZ, max_examples=examples(100))
@given(set_up=st.booleans(), accesses=st.lists(MMIO_ACCESS, max_size=60))
def test_virtio_mmio_register_file(set_up, accesses):
    from xvm.devices.virtio import mmio as M
    from xvm.devices.virtio.testing import MmioDriver

    memory = GuestMemory.create([(0, RAM)])
    irq = EventFdLine()
    device = M.VirtioMmioDevice(EchoDevice(), memory, irq)
    try:
        if set_up:
            MmioDriver(device, memory, RING).init(num_queues=2)
        for offset, size, write, value in accesses:
            if write:
                device.write(offset, size, mask(value, size))
            else:
                assert fits(device.read(offset, size), size), (offset, size)
        assert device.read(M.VIRTIO_MMIO_MAGIC_VALUE, 4) == 0x74726976  # still a virtio device
    finally:
        device.close()
        irq.close()
        memory.close()


# --- virtio-pci --------------------------------------------------------------------------------

class FakeVm:
    """What the transport asks of KVM, accepted and forgotten."""

    def set_gsi_routing(self, routes):
        pass

    def irqfd(self, fd, gsi, resample_fd=None):
        pass

    def irqfd_remove(self, fd, gsi):
        pass

    def ioeventfd(self, fd, address, length, remove=False):
        pass


# (region, offset, size, write, value): region 0 = BAR0 (common, ISR, device, notify),
# 1 = the MSI-X table and PBA, 2 = PCI configuration space.
PCI_ACCESS = st.tuples(
    st.sampled_from([0, 0, 1, 2]),
    st.one_of(st.integers(0, 0x3FFF), st.integers(0, 0x3F), st.integers(0x1000, 0x1003),
              st.integers(0x3000, 0x3010)),
    SIZES, st.booleans(), VALUES)


def _pci_setup(function):
    """Linux's virtio_pci_modern probe in short: MSI-X on, status, queues in RAM, DRIVER_OK."""
    from xvm.devices.virtio import pci as P

    control = function.msix_cap + 2
    function.config_write(control, 2, 0x8000)  # PCI_MSIX_FLAGS_ENABLE
    for vector in range(3):
        function.msix.region.write(16 * vector, 4, 0xFEE0_0000)
        function.msix.region.write(16 * vector + 8, 4, 0x40 + vector)
        function.msix.region.write(16 * vector + 12, 4, 0)
    w = function.bar0_write
    w(P.VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    w(P.VIRTIO_PCI_COMMON_GFSELECT, 4, 1)
    w(P.VIRTIO_PCI_COMMON_GF, 4, 1)  # VIRTIO_F_VERSION_1
    w(P.VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
      | VIRTIO_CONFIG_S_FEATURES_OK)
    w(P.VIRTIO_PCI_COMMON_MSIX, 2, 0)
    for queue in range(2):
        base = RING + queue * 0x4000
        w(P.VIRTIO_PCI_COMMON_Q_SELECT, 2, queue)
        w(P.VIRTIO_PCI_COMMON_Q_SIZE, 2, 8)
        for offset, address in ((0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)):
            w(offset, 4, address)  # queue_desc, queue_driver, queue_device (low halves)
        w(0x1A, 2, queue + 1)  # queue_msix_vector
        w(0x1C, 2, 1)  # queue_enable
    w(P.VIRTIO_PCI_COMMON_STATUS, 1, STATUS_OK)


@replay("virtio_pci")
@settings(FUZZ, max_examples=examples(100))
@given(set_up=st.booleans(), accesses=st.lists(PCI_ACCESS, max_size=60))
def test_virtio_pci_common_config_and_msix_table(set_up, accesses):
    from xvm.devices.pci import GsiRouter
    from xvm.devices.virtio import pci as P

    memory = GuestMemory.create([(0, RAM)])
    vm = FakeVm()
    device = EchoDevice()
    function = P.VirtioPciDevice(device, memory, router=GsiRouter(vm), irqfd=vm.irqfd,
                                 irqfd_remove=vm.irqfd_remove, ioeventfd=vm.ioeventfd)
    regions = [(function.bar0_read, function.bar0_write, P.BAR0_SIZE),
               (function.msix.region.read, function.msix.region.write, function.msix.bar_size),
               (function.read_config_register, function.config_write, 256)]
    try:
        if set_up:
            _pci_setup(function)
        for region, offset, size, write, value in accesses:
            read, write_fn, span = regions[region]
            offset = offset % span
            offset -= offset % size  # the bus hands devices naturally aligned accesses
            if write:
                write_fn(offset, size, mask(value, size))
            else:
                assert fits(read(offset, size), size), (region, offset, size)
        assert function.read_config_register(0, 2) == P.PCI_VENDOR_ID_REDHAT_QUMRANET
    finally:
        function.close()
        memory.close()

"""virtio devices as the machine wires them (KVM VM, guest RAM, irqfd, ioeventfd)."""
import os
import struct

import xvm
from xvm.devices.virtio.testing import MmioDriver
from xvm.kvm.system import Kvm
from xvm.machine import build_machine, layout
from xvm.machine.devices import VIRTIO_MMIO_GSIS

VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT = 0, 1


def test_disk_request_through_the_machine_and_nothing_left_after_close(no_leaks, guest, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xab" * 512 + bytes(4096 - 512))
    with Kvm() as kvm:
        cfg = xvm.DomainConfig(name="m", memory_mib=64, kernel=guest("busy"), disks=[xvm.Disk(image)])
        machine = build_machine(kvm, cfg, console_sink=None)
        try:
            slot = machine.virtio[0]
            assert (slot.base, slot.gsi) == (layout.VIRTIO_MMIO_BASE, VIRTIO_MMIO_GSIS[0])
            device, offset = machine.mmio_bus.find(slot.base)
            assert device is slot.transport and offset == 0
            driver = MmioDriver(slot.transport, machine.memory, 0x80_0000)
            driver.init()
            ring = driver.rings[0]
            header, data, status = 0x90_0000, 0x90_1000, 0x90_2000
            machine.memory.write(header, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
            ring.publish(ring.add_chain([(header, 16, False), (data, 512, True), (status, 1, True)]))
            driver.kick(0)
            ring.wait_used(1)
            assert machine.memory.read(status, 1) == b"\0"
            assert machine.memory.read(data, 512) == b"\xab" * 512
            del driver, ring
        finally:
            machine.close()
        # Closing the machine must release guest RAM at once, without waiting for the GC.
        assert not [fd for fd in os.listdir("/proc/self/fd") if "xvm-ram" in _link(fd)]


def _link(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""

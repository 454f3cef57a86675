"""The vCPU run loop's C fast path for virtio-mmio InterruptStatus / InterruptACK.

Exits are written into a kvm_run page in memory as KVM would leave them; the C
server (xvm_fast_mmio_serve) must answer exactly what the Python bus path answers,
and leave every other access to that path.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.devices.virtio import mmio as M
from xvm.devices.virtio import native
from xvm.devices.virtio.device import EventFdLine, InterruptKind, VirtioDevice
from xvm.devices.virtio.mmio import VirtioMmioDevice
from xvm.devices.virtio.transport import InterruptStatusWord
from xvm.kvm.ffi import ffi as kvm_ffi
from xvm.kvm.generated import kvm_h
from xvm.machine.bus import Bus

NATIVE = native.load()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the C module cannot be built here")

BASE = 0xD000_0000
USED, CONFIG = InterruptKind.USED_BUFFER, InterruptKind.CONFIG_CHANGE


class Dev(VirtioDevice):
    device_id = 42
    queue_max_sizes = (8,)


class FakeVcpu:
    """What a Runner needs of a vCPU: an fd and a kvm_run page (here plain memory)."""

    def __init__(self):
        self.fd = -1
        self.page = bytearray(kvm_ffi.sizeof("struct kvm_run"))
        self.run_struct = kvm_ffi.from_buffer("struct kvm_run *", self.page)

    def mmio_exit(self, address, size, is_write, value=0):
        run = self.run_struct
        run.exit_reason = kvm_h.KVM_EXIT_MMIO
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = address, size, int(is_write)
        kvm_ffi.buffer(run.mmio.data, 8)[:] = (value & (1 << 64) - 1).to_bytes(8, "little")

    def data(self, size):
        return int.from_bytes(kvm_ffi.buffer(self.run_struct.mmio.data, size), "little")


class Machine:
    """One virtio-mmio window on a bus, and a vCPU runner with its fast registers."""

    def __init__(self):
        from xvm.kvm.memory import GuestMemory
        from xvm.machine.fastmmio import FastMmio

        self.memory = GuestMemory.create([(0, 0x100000)])
        self.irq = EventFdLine()
        self.mmio = VirtioMmioDevice(Dev(), self.memory, self.irq)
        self.bus = Bus("MMIO")
        self.bus.register(BASE, self.mmio.size, self.mmio)
        self.fast = FastMmio([(BASE + off, kind, word) for off, kind, word in self.mmio.fast_registers()])
        self.vcpu = FakeVcpu()
        self.runner = self.fast.runner(self.vcpu)

    def access(self, offset, size, is_write, value=0, fast=True):
        """One guest access as the run loop serves it; returns what a read returned."""
        vcpu = self.vcpu
        vcpu.mmio_exit(BASE + offset, size, is_write, value)
        if not (fast and self.runner.serve()):
            mmio = vcpu.run_struct.mmio
            self.bus.handle(mmio.phys_addr, mmio.len, bool(mmio.is_write),
                            memoryview(kvm_ffi.buffer(mmio.data, 8)))
        return None if is_write else vcpu.data(size)

    def close(self):
        self.mmio.close()
        self.irq.close()
        self.memory.close()


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.close()


def test_interrupt_status_read_is_served_in_c_from_the_transports_bits(machine):
    t = machine.mmio.transport
    t.raise_interrupt(USED)
    machine.vcpu.mmio_exit(BASE + M.VIRTIO_MMIO_INTERRUPT_STATUS, 4, False)
    assert machine.runner.serve()
    assert machine.vcpu.data(4) == USED.value
    assert machine.runner.served == machine.fast.served == 1
    assert t.interrupt_status == USED.value  # a read does not clear (§4.2.2)


def test_interrupt_ack_in_c_clears_only_the_bits_written(machine):
    t = machine.mmio.transport
    t.raise_interrupt(USED)
    t.raise_interrupt(CONFIG)
    machine.vcpu.mmio_exit(BASE + M.VIRTIO_MMIO_INTERRUPT_ACK, 4, True, USED.value)
    assert machine.runner.serve()
    assert t.interrupt_status == CONFIG.value
    assert machine.access(M.VIRTIO_MMIO_INTERRUPT_STATUS, 4, False, fast=False) == CONFIG.value
    t.raise_interrupt(USED)  # the device side sets bits on the same word the C side clears
    assert machine.access(M.VIRTIO_MMIO_INTERRUPT_STATUS, 4, False) == USED.value | CONFIG.value


@pytest.mark.parametrize("offset, size, is_write", [
    (M.VIRTIO_MMIO_INTERRUPT_STATUS, 2, False),  # not 32 bits wide (§4.2.2.2)
    (M.VIRTIO_MMIO_INTERRUPT_STATUS, 8, False),
    (M.VIRTIO_MMIO_INTERRUPT_STATUS + 1, 4, False),  # not aligned
    (M.VIRTIO_MMIO_INTERRUPT_STATUS, 4, True),  # a write to a read-only register
    (M.VIRTIO_MMIO_INTERRUPT_ACK, 4, False),  # a read of a write-only one
    (M.VIRTIO_MMIO_INTERRUPT_ACK, 2, True),
    (M.VIRTIO_MMIO_STATUS, 4, False),  # every other register
    (M.VIRTIO_MMIO_QUEUE_NOTIFY, 4, True),
])
def test_every_other_access_is_left_to_the_python_path(machine, offset, size, is_write):
    t = machine.mmio.transport
    t.raise_interrupt(USED)
    machine.vcpu.mmio_exit(BASE + offset, size, is_write, 0xFFFF_FFFF)
    before = bytes(machine.vcpu.page)
    assert not machine.runner.serve()
    assert bytes(machine.vcpu.page) == before
    assert machine.runner.served == 0
    assert t.interrupt_status == USED.value


def test_an_exit_that_is_not_mmio_is_left_alone(machine):
    machine.vcpu.mmio_exit(BASE + M.VIRTIO_MMIO_INTERRUPT_STATUS, 4, False)
    machine.vcpu.run_struct.exit_reason = kvm_h.KVM_EXIT_IO  # the same bytes, another exit
    assert not machine.runner.serve()


def test_two_registers_at_one_address_are_refused():
    from xvm.machine.fastmmio import FastMmio

    word = NATIVE.ffi.new("uint32_t *")
    with pytest.raises(ValueError):
        FastMmio([(BASE, native.FAST_READ_WORD, word), (BASE, native.FAST_WRITE_CLEAR, word)])


ACCESS = st.tuples(
    st.sampled_from([M.VIRTIO_MMIO_INTERRUPT_STATUS, M.VIRTIO_MMIO_INTERRUPT_ACK,
                     M.VIRTIO_MMIO_INTERRUPT_STATUS + 2, M.VIRTIO_MMIO_STATUS, M.VIRTIO_MMIO_MAGIC_VALUE]),
    st.sampled_from([1, 2, 4, 8]), st.booleans(), st.integers(0, (1 << 64) - 1))
STEP = st.one_of(st.tuples(st.just("raise"), st.sampled_from([USED, CONFIG])), st.tuples(st.just("access"), ACCESS))


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, max_size=30))
def test_the_c_path_answers_as_the_python_path_does(steps):
    """The same accesses, one machine with the fast path, one without: every read returns
    the same value and the interrupt status and illegal-access count stay equal."""
    fast, ref = Machine(), Machine()
    try:
        for step in steps:
            if step[0] == "raise":
                for m in (fast, ref):
                    m.mmio.transport.raise_interrupt(step[1])
            else:
                offset, size, is_write, value = step[1]
                got = fast.access(offset, size, is_write, value, fast=True)
                want = ref.access(offset, size, is_write, value, fast=False)
                assert got == want
            assert fast.mmio.interrupt_status == ref.mmio.interrupt_status
            assert fast.mmio.transport.illegal_access_count == ref.mmio.transport.illegal_access_count
    finally:
        fast.close()
        ref.close()


WORD_OP = st.tuples(st.sampled_from(["set", "clear", "take", "store"]), st.integers(0, 0xFFFF_FFFF))


@given(st.lists(WORD_OP, max_size=30))
def test_the_c_status_word_behaves_as_the_python_reference(ops):
    c, py = InterruptStatusWord(NATIVE), InterruptStatusWord(None)
    assert c.cell is not None and py.cell is None
    for op, arg in ops:
        results = [getattr(w, op)() if op == "take" else getattr(w, op)(arg) for w in (c, py)]
        assert results[0] == results[1]
        assert c.value == py.value

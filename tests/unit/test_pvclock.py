"""The guest's kvmclock as the guest computes it from its pvclock page (xvm.machine.state.pvclock_ns):
what a snapshot records as the clock at the moment the TSC was read."""
import struct

import pytest

from xvm.kvm.memory import GuestMemory
from xvm.machine.state import MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW, pvclock_ns

PAGE = 0x5000
PVCLOCK = struct.Struct("<IIQQIbBxx")


@pytest.fixture
def memory():
    with GuestMemory.create([(0, 1 << 20)]) as mem:
        yield mem


def write_page(memory, *, version=2, stamp=1000, system_time=5_000_000, mul=1 << 31, shift=0):
    memory.write(PAGE, PVCLOCK.pack(version, 0, stamp, system_time, mul, shift, 1))


@pytest.mark.parametrize("msr", [MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_SYSTEM_TIME])
def test_clock_from_the_guests_time_page(memory, msr):
    # mul 2^31 = 0.5 ns per (shifted) cycle: 4000 cycles after the stamp, 2000 ns later
    write_page(memory)
    assert pvclock_ns(memory, {msr: PAGE | 1}, 5000) == 5_000_000 + 2000


def test_shift_scales_the_tsc_delta_first(memory):
    write_page(memory, shift=-1)  # (delta >> 1) * 0.5
    assert pvclock_ns(memory, {MSR_KVM_SYSTEM_TIME_NEW: PAGE | 1}, 5000) == 5_000_000 + 1000
    write_page(memory, shift=2)  # (delta << 2) * 0.5
    assert pvclock_ns(memory, {MSR_KVM_SYSTEM_TIME_NEW: PAGE | 1}, 5000) == 5_000_000 + 8000


def test_no_clock_without_an_enabled_page_or_mid_update(memory):
    write_page(memory)
    assert pvclock_ns(memory, {MSR_KVM_SYSTEM_TIME_NEW: PAGE}, 5000) is None  # enable bit clear
    assert pvclock_ns(memory, {}, 5000) is None
    assert pvclock_ns(memory, {MSR_KVM_SYSTEM_TIME_NEW: (2 << 20) | 1}, 5000) is None  # outside RAM
    write_page(memory, version=3)  # odd: KVM is writing it
    assert pvclock_ns(memory, {MSR_KVM_SYSTEM_TIME_NEW: PAGE | 1}, 5000) is None

"""The guest's TSC and its kvmclock stay in step across save and restore (issue 13).

A Linux guest compares the two (the clocksource watchdog) and marks its TSC unstable when they
disagree by more than ~60 ms: seen under the HVM test host, where taking the state of a
machine takes long enough between the TSC read and the clock read to be off by 0.1-0.9 s
(tests/hvm/test_migration_linux.py).  Here the delay is made on purpose, on the real /dev/kvm.
"""
import dataclasses
import time

import pytest

import xvm
from xvm.kvm.memory import GuestMemory
from xvm.kvm.system import Kvm
from xvm.kvm.vcpu import install_kick_handler
from xvm.machine import build_machine
from xvm.machine.state import MSR_IA32_TSC, save_vcpu, save_vm

SLOW_SAVE_S = 0.5  # between the vCPUs' state and the VM's, as a slow machine may take
STEP_NS = 20_000_000  # how far the TSC and the clock may move apart: well below Linux's 62.5 ms


def tsc_minus_clock_ns(machine):
    """The guest TSC in ns minus the VM's kvmclock, read back to back (constant while the two
    run in step)."""
    vcpu = machine.vm.vcpus[0]
    tsc = vcpu.get_msrs([MSR_IA32_TSC])[MSR_IA32_TSC]
    clock = machine.vm.get_clock().clock
    return tsc * 1_000_000 // vcpu.get_tsc_khz() - clock


def test_restored_tsc_keeps_step_with_the_kvmclock_however_slow_the_save(guest):
    install_kick_handler()
    config = xvm.DomainConfig(name="clock", kernel=guest("busy"), memory_mib=16, cmdline="shift=24")
    with Kvm() as kvm:
        source = build_machine(kvm, config, console_sink=None)
        try:
            source.start()
            time.sleep(0.2)
            source.pause()
            before = tsc_minus_clock_ns(source)
            state = source.save_state()
            indices = kvm.msr_index_list()
            vcpus = tuple(save_vcpu(vcpu, indices, source.memory) for vcpu in source.vm.vcpus)
            time.sleep(SLOW_SAVE_S)  # the devices, the disks' flush... (slow under emulation)
            state = dataclasses.replace(state, vcpus=vcpus, vm=save_vm(source.vm, vcpus))
            memory = GuestMemory.create(state.memory)
            for region in source.memory.regions:
                memory.write(region.gpa, source.memory.read(region.gpa, region.size))
        finally:
            source.close()
        time.sleep(0.3)  # saved a while: neither clock counts it
        restored = build_machine(kvm, config, console_sink=None, state=state, memory=memory)
        try:
            time.sleep(SLOW_SAVE_S)  # slow to start, too: the TSC is set when the vCPUs start
            restored.start()
            time.sleep(0.2)
            restored.pause()
            after = tsc_minus_clock_ns(restored)
        finally:
            restored.close()
    assert abs(after - before) < STEP_NS, (
        f"the guest's TSC moved {(after - before) / 1e6:+.1f} ms against its kvmclock across save/restore")
    assert state.vm.clock <= max(v.tsc_clock for v in state.vcpus)  # the clock resumes where the guest left it

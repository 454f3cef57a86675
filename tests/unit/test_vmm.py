"""Vmm.handle against a fake machine: the action table, the control thread, exit events.

No /dev/kvm: the machine factory hands out FakeMachines that record what was done
to them and let the test play the guest (power off, reset, crash); their "vCPU
threads" are real (idle) threads, so the VMM's scheduler places and pins real threads.
"""
import threading

import pytest

from xvm.config import DomainConfig
from xvm.errors import StateError, XvmError
from xvm.machine.machine import ExitReason, MachineExit
from xvm.vmm import actions as A
from xvm.vmm.lifecycle import TRANSITIONS, DomainState
from xvm.vmm.vmm import Vmm, VmmGone

S = DomainState


class FakeMachine:
    def __init__(self, config, console_sink, on_exit, fail_start=False):
        self.config = config
        self.console_sink = console_sink
        self.on_exit = on_exit
        self.calls = []
        self.input = bytearray()
        self.fail_start = fail_start
        self.closed = False
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        if self.fail_start:
            raise XvmError("boom at start")
        self.calls.append("start")
        for _ in range(self.config.vcpus):
            thread = threading.Thread(target=self._stop.wait, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.console_sink(b"booted\n")

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")

    def power_button(self):
        self.calls.append("power_button")

    def console_input(self, data):
        self.input += data

    def stats(self):
        return {"devices": [{"name": "fake", "metrics": {"n": 1}}]}

    def vcpu_thread_ids(self):
        return [thread.native_id for thread in self._threads]

    def close(self):
        self.closed = True
        self._stop.set()
        for thread in self._threads:
            thread.join()

    # the guest's side
    def guest_exit(self, reason, detail=""):
        self.on_exit(self, MachineExit(reason, detail))


class Factory:
    def __init__(self):
        self.machines = []
        self.fail_next = False

    def __call__(self, config, console_sink, on_exit):
        machine = FakeMachine(config, console_sink, on_exit, fail_start=self.fail_next)
        self.machines.append(machine)
        return machine


@pytest.fixture
def vmm(tmp_path):
    (tmp_path / "k").write_bytes(b"x")
    config = DomainConfig(name="fake", memory_mib=64, kernel=str(tmp_path / "k"))
    ids = iter(range(1, 1000))
    states = []
    factory = Factory()
    v = Vmm(config, factory=factory, next_id=lambda: next(ids),
            on_state=lambda vmm, state: states.append(state), linger=True, own_process=False).start()
    v.factory, v.states = factory, states
    yield v
    v.close()


def test_boot_pause_resume_destroy(vmm):
    info = vmm.handle(A.Boot())
    assert info["state"] == "running" and info["id"] == 1 and info["boot_count"] == 1
    machine = vmm.factory.machines[-1]
    vmm.handle(A.Pause())
    assert vmm.state is S.PAUSED
    vmm.handle(A.Resume())
    vmm.handle(A.Destroy())
    assert vmm.state is S.SHUTOFF and vmm.id is None and machine.closed
    assert machine.calls == ["start", "pause", "resume"]
    assert vmm.states == [S.RUNNING, S.PAUSED, S.RUNNING, S.SHUTOFF]


@pytest.mark.parametrize("action", [A.Pause(), A.Resume(), A.PowerButton(), A.Reset(), A.Destroy(),
                                    A.ConsoleInput(data=b"x")])
def test_illegal_actions_when_shut_off_change_nothing(vmm, action):
    with pytest.raises(StateError) as err:
        vmm.handle(action)
    assert "it is shutoff" in str(err.value)
    assert vmm.state is S.SHUTOFF and vmm.factory.machines == [] and vmm.states == []


def test_every_action_has_a_row_in_the_table():
    assert set(TRANSITIONS) >= set(A.VMM_ACTIONS)


def test_boot_twice_is_refused(vmm):
    vmm.handle(A.Boot())
    with pytest.raises(StateError, match="cannot start domain 'fake': it is running"):
        vmm.handle(A.Boot())
    assert len(vmm.factory.machines) == 1


def test_failed_boot_leaves_it_shut_off(vmm):
    vmm.factory.fail_next = True
    with pytest.raises(XvmError, match="boom at start"):
        vmm.handle(A.Boot())
    assert vmm.state is S.SHUTOFF and vmm.factory.machines[0].closed and vmm.states == []


def test_guest_power_off_reaches_the_control_thread(vmm):
    vmm.handle(A.Boot())
    vmm.factory.machines[-1].guest_exit(ExitReason.POWEROFF)
    assert vmm.wait_for({S.SHUTOFF}, 5) is S.SHUTOFF
    assert vmm.factory.machines[-1].closed
    assert "powered off" in vmm.console.closed_reason


def test_guest_reset_reboots_with_a_new_id(vmm):
    vmm.handle(A.Boot())
    first = vmm.factory.machines[-1]
    first.guest_exit(ExitReason.RESET, "i8042 reset")
    for _ in range(100):
        if len(vmm.factory.machines) == 2 and vmm.id == 2:
            break
        threading.Event().wait(0.01)
    assert first.closed and vmm.state is S.RUNNING and vmm.id == 2 and vmm.boot_count == 2
    assert vmm.console.text().count("booted") == 2  # one console across reboots


def test_crash_records_the_reason(vmm):
    vmm.handle(A.Boot())
    vmm.factory.machines[-1].guest_exit(ExitReason.CRASH, "vCPU 0: emulation failure")
    assert vmm.wait_for({S.CRASHED}, 5) is S.CRASHED
    assert vmm.handle(A.Info())["crash_reason"] == "vCPU 0: emulation failure"
    vmm.handle(A.Boot())  # a crashed domain may be started again
    assert vmm.state is S.RUNNING and vmm.crash_reason is None


def test_exit_of_a_torn_down_machine_is_ignored(vmm):
    vmm.handle(A.Boot())
    old = vmm.factory.machines[-1]
    vmm.handle(A.Reset())
    old.guest_exit(ExitReason.POWEROFF)  # late event from the previous boot
    assert vmm.handle(A.Ping()) == "pong"  # the event has been processed by now
    assert vmm.state is S.RUNNING and vmm.id == 2


def test_console_input_goes_to_the_machine(vmm):
    vmm.handle(A.Boot())
    vmm.handle(A.ConsoleInput(data=b"ls\n"))
    assert bytes(vmm.factory.machines[-1].input) == b"ls\n"


def test_stats_and_info(vmm):
    vmm.handle(A.Boot())
    stats = vmm.handle(A.Stats())
    assert stats["domain"]["vcpu_thread_ids"] == vmm.factory.machines[-1].vcpu_thread_ids()
    assert len(stats["domain"]["vcpu_thread_ids"]) == 1
    assert stats["devices"][0]["metrics"] == {"n": 1}


def test_actions_from_many_threads_are_serialized(vmm):
    vmm.handle(A.Boot())
    errors = []

    def flip():
        for _ in range(50):
            try:
                vmm.handle(A.Pause())
            except StateError:
                pass
            try:
                vmm.handle(A.Resume())
            except StateError:
                pass

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = vmm.factory.machines[-1].calls[1:]
    # strictly alternating: never two pauses or two resumes in a row
    assert all(a != b for a, b in zip(calls, calls[1:])) and not errors


def test_without_linger_the_vmm_ends_after_the_domain_stops(tmp_path):
    (tmp_path / "k").write_bytes(b"x")
    config = DomainConfig(name="fake", memory_mib=64, kernel=str(tmp_path / "k"))
    factory = Factory()
    vmm = Vmm(config, factory=factory, next_id=lambda: 7, own_process=False).start()
    vmm.handle(A.Boot())
    vmm.handle(A.Destroy())
    vmm._thread.join(5)
    assert not vmm._thread.is_alive()
    assert vmm.handle(A.Info())["state"] == "shutoff"  # read-only: answered from the final state
    with pytest.raises(VmmGone):
        vmm.handle(A.Boot())


def test_handle_rejects_non_actions(vmm):
    with pytest.raises(TypeError):
        vmm.handle("pause")

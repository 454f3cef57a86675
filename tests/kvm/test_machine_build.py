"""build_machine: a machine from a DomainConfig, from disk fds opened elsewhere, on_exit once,
stats and vCPU thread IDs."""
import json
import os
import threading
import time

import pytest

import xvm
from xvm.kvm.system import Kvm
from xvm.machine import ExitReason, build_machine


@pytest.fixture
def kvm():
    with Kvm() as k:
        yield k


class Console:
    def __init__(self):
        self.data = bytearray()
        self.changed = threading.Condition()

    def sink(self, data):
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def expect(self, text, timeout=10):
        with self.changed:
            assert self.changed.wait_for(lambda: text.encode() in self.data, timeout), bytes(self.data)


class Exits:
    def __init__(self):
        self.calls = []
        self.threads = []
        self.done = threading.Event()

    def __call__(self, exit):
        self.calls.append(exit)
        self.threads.append(threading.current_thread().name)
        self.done.set()


def config(guest, image, **kw):
    kw.setdefault("memory_mib", 64)
    return xvm.DomainConfig(name="m", kernel=guest(image), **kw)


@pytest.mark.parametrize("image,reason", [("poweroff", ExitReason.POWEROFF), ("reboot", ExitReason.RESET)])
def test_on_exit_once_from_the_vcpu_thread_that_noticed(no_leaks, kvm, guest, image, reason):
    exits = Exits()
    machine = build_machine(kvm, config(guest, image), console_sink=None, on_exit=exits)
    try:
        machine.start()
        assert exits.done.wait(10)
        assert machine.wait(10).reason is reason
        machine.stop()  # a later stop changes nothing and tells nobody
    finally:
        machine.close()
    assert [e.reason for e in exits.calls] == [reason] and exits.threads == ["xvm-vcpu0"]
    assert machine.exit.reason is reason


def test_on_exit_once_on_stop_and_close(no_leaks, kvm, guest):
    exits = Exits()
    machine = build_machine(kvm, config(guest, "busy", vcpus=2), console_sink=None, on_exit=exits)
    try:
        machine.start()
        machine.stop()
        assert machine.wait(0).reason is ExitReason.STOPPED
    finally:
        machine.close()
    assert [e.reason for e in exits.calls] == [ExitReason.STOPPED]
    assert exits.threads == [threading.current_thread().name]

    never_started = Exits()
    build_machine(kvm, config(guest, "busy"), console_sink=None, on_exit=never_started).close()
    assert [e.reason for e in never_started.calls] == [ExitReason.STOPPED]


def test_failed_build_never_calls_on_exit_and_closes_what_it_was_given(no_leaks, kvm, guest, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    disk = xvm.Disk(image)
    backend = disk.open()
    exits = Exits()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(xvm.BootError, match="empty"):
        build_machine(kvm, xvm.DomainConfig(name="m", memory_mib=64, kernel=empty, disks=[disk]),
                      console_sink=None, disks=[backend], on_exit=exits)
    assert backend.fd == -1 and not exits.calls
    disk.check()  # the lock went with the backend
    with pytest.raises(xvm.ConfigError, match="1 disk\\(s\\) but 0 backend"):
        build_machine(kvm, config(guest, "busy", disks=[disk]), console_sink=None, disks=[])


def test_disks_from_fds_opened_by_a_parent(no_leaks, kvm, guest, tmp_path):
    """The parent opens and locks each image and passes the fd; the machine serves the guest
    from those fds and holds the locks until it is closed."""
    size = 8 << 20
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
    disk = xvm.Disk(image, serial="from-fd")
    cfg = config(guest, "blk", cmdline="mode=verify", disks=[disk])
    fd = disk.open_fd()
    dup = os.dup(fd)  # as if in the VMM process: another fd of the same open file description
    os.close(fd)
    console = Console()
    machine = build_machine(kvm, cfg, console_sink=console.sink, disks=[disk.open(fd=dup)])
    try:
        machine.start()
        console.expect(f"blk: verify ok capacity={size // 512} serial=from-fd")
        assert machine.wait(10).reason is ExitReason.POWEROFF
        with pytest.raises(xvm.ConfigError, match="locked"):
            disk.check()
        assert machine.virtio[0].device.backend.fd == dup
    finally:
        machine.close()
    disk.check()


def test_stats_and_vcpu_thread_ids(no_leaks, kvm, guest, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    cfg = config(guest, "busy", vcpus=2, disks=[xvm.Disk(image)])
    machine = build_machine(kvm, cfg, console_sink=None)
    try:
        assert machine.vcpu_thread_ids() == []
        assert [v["thread_id"] for v in machine.stats()["vcpus"]] == [None, None]
        machine.start()
        tids = machine.vcpu_thread_ids()
        assert len(tids) == 2 and len(set(tids)) == 2 and threading.get_native_id() not in tids
        for tid in tids:
            assert os.path.exists(f"/proc/self/task/{tid}")  # a thread of this process
        deadline = time.monotonic() + 5  # vCPU 0 runs the busy loop: its thread accrues CPU time
        while _cpu_ns(tids[0]) < 50_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _cpu_ns(tids[0]) >= 50_000_000
        stats = json.loads(json.dumps(machine.stats()))
        assert stats["vcpus"] == [{"index": 0, "thread_id": tids[0]}, {"index": 1, "thread_id": tids[1]}]
        [blk] = stats["devices"]
        assert blk["name"] == f"virtio-blk:{image}" and blk["transport"] == "mmio"
        assert blk["metrics"]["read_count"] == 0 and "flush_count" in blk["metrics"]
    finally:
        machine.close()


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_one_slot_list_for_both_transports(no_leaks, kvm, guest, tmp_path, transport):
    disks = []
    for i in range(2):
        (tmp_path / f"d{i}.img").write_bytes(bytes(1 << 20))
        disks.append(xvm.Disk(tmp_path / f"d{i}.img"))
    machine = build_machine(kvm, config(guest, "busy", disks=disks, virtio_transport=transport),
                            console_sink=None)
    try:
        assert [slot.kind for slot in machine.virtio] == [transport, transport]
        assert [slot.device.disk for slot in machine.virtio] == disks
        assert [d["transport"] for d in machine.stats()["devices"]] == [transport, transport]
    finally:
        machine.close()
    # closed (no_leaks: no fd or thread left), still listed: a stopped machine's metrics stay readable
    assert [slot.irq_fd for slot in machine.virtio] == [-1, -1]
    assert [d["transport"] for d in machine.stats()["devices"]] == [transport, transport]


def _cpu_ns(tid):
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def test_a_machine_started_parked_runs_only_once_unparked(no_leaks, kvm, guest):
    """start(parked=True) makes the vCPU threads but none enters KVM_RUN until unpark() (a
    migration's destination starts them while the pages arrive, before the state)."""
    console = Console()
    machine = build_machine(kvm, config(guest, "busy", cmdline="shift=20"), console_sink=console.sink)
    try:
        machine.start(parked=True)
        assert len(machine.vcpu_thread_ids()) == 1
        time.sleep(0.3)
        assert console.data == b"" and machine.vcpus.quiescent
        # the first-run hook (a restored machine's clocks) may come after the threads started
        hooked = []
        machine.vcpus.before_first_run = lambda vcpu: hooked.append(vcpu.id)
        machine.unpark()
        console.expect("count ")
        assert hooked == [0]
    finally:
        machine.close()


def test_a_saved_machine_reads_its_msrs_in_one_ioctl(no_leaks, kvm, guest):
    """Which MSRs a vCPU can read is found when it is made: saving the state (a migration's
    switchover) then reads them all in one KVM_GET_MSRS (and the TSC once more), not one
    call per MSR KVM cannot read, and gets the same MSRs as trying each."""
    from xvm.machine import state as machine_state

    machine = build_machine(kvm, config(guest, "busy"), console_sink=None)
    try:
        machine.start()
        time.sleep(0.1)
        machine.pause()
        vcpu = machine.vm.vcpus[0]
        calls = []
        get_msrs = vcpu.get_msrs
        vcpu.get_msrs = lambda indices: calls.append(len(indices)) or get_msrs(indices)
        state = machine.save_state()
        assert len(calls) == 2 and calls[1] == 1, calls
        del vcpu.get_msrs
        machine_state._READABLE_MSRS.pop(vcpu)  # forgotten: every index tried again
        again = machine.save_state()
        assert [i for i, _ in again.vcpus[0].msrs] == [i for i, _ in state.vcpus[0].msrs]
        assert len(state.vcpus[0].msrs) > 10
    finally:
        machine.close()

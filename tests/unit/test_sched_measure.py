"""xvm.sched measured: real busy threads of child processes get the CPU their weight and cap
say, read from the kernel's exact per-thread runtime (a generous margin: the machine is shared)."""
import itertools
import os
import time

import pytest

from xvm.sched import DomainCgroup, Sched, cpu_time_ns, host_cpus, pin_thread
from xvm.sched.loadgen import Load

V1 = "/sys/fs/cgroup/cpu"
pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.path.isdir(V1) and os.access(V1, os.W_OK)),
    reason="needs root and a writable cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
_counter = itertools.count()


@pytest.fixture
def domains():
    """``make(name, threads)`` → (Load, DomainCgroup) with the load placed; all torn down after."""
    root = f"{V1}/xvm-measure-{os.getpid()}-{next(_counter)}"
    made = []

    def make(name, threads=1):
        load = Load(threads)
        cg = DomainCgroup(name, root=root)
        made.append((load, cg))
        cg.place(load.tids, [load.pid])
        return load, cg

    yield make
    for load, cg in made:
        load.stop()
        cg.remove()
    if os.path.isdir(root):
        os.rmdir(root)


def cpu_seconds(loads, window):
    """CPU seconds each load's threads got over ``window`` seconds of wall time."""
    def total(load):
        return sum(cpu_time_ns(load.pid, tid) for tid in load.tids)

    before = [total(load) for load in loads]
    time.sleep(window)
    return [(total(load) - b) / 1e9 for load, b in zip(loads, before)]


def test_weights_share_a_contended_cpu_and_change_live(domains):
    cpu = max(host_cpus())
    (light, light_cg), (heavy, heavy_cg) = domains("light"), domains("heavy")
    light_cg.apply(Sched(weight=256), vcpus=1)
    heavy_cg.apply(Sched(weight=768), vcpus=1)
    for load in (light, heavy):
        pin_thread(load.tids[0], {cpu})
    a, b = cpu_seconds([light, heavy], 2.0)
    assert a > 0.05 and 2.2 < b / a < 4.0, (a, b)  # ideal 3
    light_cg.apply(Sched(weight=768), vcpus=1)  # live, threads running
    heavy_cg.apply(Sched(weight=256), vcpus=1)
    time.sleep(0.2)
    a, b = cpu_seconds([light, heavy], 2.0)
    assert b > 0.05 and 2.2 < a / b < 4.0, (a, b)


def test_cap_holds_on_an_idle_or_busy_host(domains):
    load, cg = domains("capped")
    cg.apply(Sched(cap=30), vcpus=1)
    (used,) = cpu_seconds([load], 2.0)
    assert 0.1 < used / 2.0 <= 0.30 + 0.03, used
    cg.apply(Sched(cap=0), vcpus=1)  # uncapped live: it may use more again
    cg.apply(Sched(cap=10), vcpus=1)
    (used,) = cpu_seconds([load], 2.0)
    assert 0.02 < used / 2.0 <= 0.10 + 0.03, used

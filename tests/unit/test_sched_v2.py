"""xvm.sched.DomainCgroup on cgroup v2, where the host has a cgroup2 mount offering the cpu
controller (not these machines: their cpu controller is on v1; the HVM test host has one):

    python3 -m xvm.testhost run -- sh -c \\
        'mount -t cgroup2 none /sys/fs/cgroup && python3 -m pytest -q tests/unit/test_sched_v2.py'
"""
import itertools
import os
import signal
import time

import pytest

from xvm.sched import DomainCgroup, Sched, cpu_time_ns
from xvm.sched.cgroup import _mounts, _v2_has_cpu
from xvm.sched.loadgen import Load


def _v2_mount():
    for point, fstype, _ in _mounts():
        if fstype == "cgroup2" and _v2_has_cpu(point) and os.access(point, os.W_OK):
            return point
    return None


MOUNT = _v2_mount()
pytestmark = pytest.mark.skipif(MOUNT is None, reason="no writable cgroup2 mount with the cpu controller")
_counter = itertools.count()


def read(path):
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def root():
    path = f"{MOUNT}/xvm-test-{os.getpid()}-{next(_counter)}"
    yield path
    if os.path.isdir(path):
        for dirpath, _, _ in os.walk(path):  # top down: threaded children cannot list processes
            try:
                pids = read(f"{dirpath}/cgroup.procs").split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    open(f"{MOUNT}/cgroup.procs", "w").write(pid)
                except ProcessLookupError:
                    pass
        for dirpath, _, _ in os.walk(path, topdown=False):
            os.rmdir(dirpath)


def cgroup_of(pid, tid):
    for line in read(f"/proc/{pid}/task/{tid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError("no v2 line")


def test_v2_layout_settings_and_removal(root):
    with Load(3) as load:
        cg = DomainCgroup("web", root=root)
        assert cg.version == 2
        cg.place(load.tids[:2], load.tids[2:] + [load.pid])
        rel = cg.path[len(MOUNT):]
        for child in ("vcpu0", "vcpu1", "emulator"):
            assert read(f"{cg.path}/{child}/cgroup.type") == "threaded"
        assert cgroup_of(load.pid, load.tids[0]) == f"{rel}/vcpu0"
        assert cgroup_of(load.pid, load.tids[1]) == f"{rel}/vcpu1"
        assert cgroup_of(load.pid, load.pid) == f"{rel}/emulator"
        assert read(f"{cg.path}/cgroup.procs").split() == [str(load.pid)]
        cg.apply(Sched(weight=512, cap=150), vcpus=2)
        assert read(f"{cg.path}/cpu.weight") == "200"
        assert read(f"{cg.path}/cpu.max") == "45000 30000"
        assert read(f"{root}/cpu.weight") == "200"  # the parent weighs its domains' sum
        cg.apply(Sched(weight=256, cap=0), vcpus=2)
        assert read(f"{cg.path}/cpu.max") == "max 100000"
        assert cg.params()["global_quota"] == -1 and cg.params()["cpu_shares"] == 100
        cg.apply(Sched(cap=30), vcpus=2)
        before = sum(cpu_time_ns(load.pid, t) for t in load.tids)
        time.sleep(2)
        used = (sum(cpu_time_ns(load.pid, t) for t in load.tids) - before) / 2e9
        assert used <= 0.30 + 0.05, used
        cg.remove()
        assert not os.path.exists(cg.path)
        assert cgroup_of(load.pid, load.tids[0]) == "/"
        cg.remove()


def test_v2_remove_after_sigkill(root):
    with Load(2) as load:
        cg = DomainCgroup("web", root=root)
        cg.place(load.tids, [load.pid])
        cg.apply(Sched(cap=50), vcpus=2)
        os.kill(load.pid, signal.SIGKILL)
        load.process.wait()
    DomainCgroup("web", root=root).remove()
    assert not os.path.exists(f"{root}/web")

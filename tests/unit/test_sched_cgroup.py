"""xvm.sched.DomainCgroup on this host's real cgroup v1 cpu controller, with real threads of
a child process: files written (read back), threads placed (read from /proc), live changes,
cleanup (also after SIGKILL), refusal without write access; and pinning read back from /proc."""
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from xvm.errors import ConfigError, HostError
from xvm.sched import (
    DomainCgroup,
    Sched,
    cpus_allowed_list,
    detect,
    host_cpus,
    pin_thread,
    thread_affinity,
)
from xvm.sched.loadgen import Load

V1 = "/sys/fs/cgroup/cpu"
pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.path.isdir(V1) and os.access(V1, os.W_OK)),
    reason="needs root and a writable cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
_counter = itertools.count()


@pytest.fixture
def root():
    """A private directory for this test's domain cgroups, removed afterwards."""
    path = f"{V1}/xvm-test-{os.getpid()}-{next(_counter)}"
    yield path
    for dirpath, _, _ in os.walk(path, topdown=False):
        for tid in open(f"{dirpath}/tasks").read().split():
            try:
                open(f"{V1}/tasks", "w").write(tid)
            except ProcessLookupError:
                pass
        os.rmdir(dirpath)


@pytest.fixture
def load():
    with Load(3) as running:
        yield running


def read(path):
    with open(path) as f:
        return f.read().strip()


def cpu_cgroup_of(pid, tid):
    for line in read(f"/proc/{pid}/task/{tid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    raise AssertionError("no cpu line")


def test_detects_v1_here():
    assert detect() == (1, V1)


def test_constructor_writes_nothing(root):
    cg = DomainCgroup("web", root=root)
    assert (cg.version, cg.path) == (1, f"{root}/web")
    assert not os.path.exists(root)
    cg.remove()  # idempotent on nothing


def test_default_root_is_xvm_under_the_mount():
    cg = DomainCgroup("0d1f2c3b-aaaa-bbbb-cccc-123456789abc")
    assert cg.path == f"{V1}/xvm/0d1f2c3b-aaaa-bbbb-cccc-123456789abc"


@pytest.mark.parametrize("name", ["", "..", "a/b", "../etc", 3, None])
def test_rejects_names_that_are_not_cgroup_names(name, root):
    with pytest.raises(ConfigError):
        DomainCgroup(name, root=root)


def test_root_must_be_on_the_cpu_controller(tmp_path):
    with pytest.raises(HostError, match="cpu controller"):
        DomainCgroup("web", root=str(tmp_path))
    with pytest.raises(HostError, match="cpu controller"):
        DomainCgroup("web", root="/sys/fs/cgroup/memory/xvm")


def test_layout_and_placement(root, load):
    cg = DomainCgroup("web", root=root)
    vcpus, others = load.tids[:2], load.tids[2:] + [load.pid]
    cg.place(vcpus, others)
    assert {d for d in os.listdir(cg.path) if os.path.isdir(f"{cg.path}/{d}")} == {"emulator", "vcpu0", "vcpu1"}
    rel = cg.path[len(V1):]
    assert cpu_cgroup_of(load.pid, vcpus[0]) == f"{rel}/vcpu0"
    assert cpu_cgroup_of(load.pid, vcpus[1]) == f"{rel}/vcpu1"
    for tid in others:
        assert cpu_cgroup_of(load.pid, tid) == f"{rel}/emulator"
    assert read(f"{cg.vcpu_path(1)}/tasks").split() == [str(vcpus[1])]
    assert sorted(cg.threads(cg.emulator_path)) == sorted(others)
    assert cg.threads() == []  # nothing left in the domain cgroup itself
    # Other controllers are untouched: the thread stays where it was for cpuset/memory.
    assert read(f"/proc/{load.pid}/task/{vcpus[0]}/cgroup").count("xvm-test") == 1


def test_apply_writes_shares_and_bandwidth(root, load):
    cg = DomainCgroup("web", root=root)
    cg.place(load.tids[:2], [load.pid])
    cg.apply(Sched(weight=512, cap=150), vcpus=2)
    assert read(f"{cg.path}/cpu.shares") == "2048"
    assert read(f"{cg.path}/cpu.cfs_period_us") == "30000"
    assert read(f"{cg.path}/cpu.cfs_quota_us") == "45000"
    for child in (cg.vcpu_path(0), cg.vcpu_path(1), cg.emulator_path):  # children: defaults
        assert read(f"{child}/cpu.shares") == "1024" and read(f"{child}/cpu.cfs_quota_us") == "-1"
    assert cg.params() == {"cpu_shares": 2048, "vcpu_period": 100000, "vcpu_quota": -1,
                           "emulator_period": 100000, "emulator_quota": -1,
                           "global_period": 30000, "global_quota": 45000}


def test_live_changes_keep_threads_in_place(root, load):
    cg = DomainCgroup("web", root=root)
    cg.place(load.tids[:1], load.tids[1:])
    for sched, (shares, period, quota) in [
        (Sched(256, 30), ("1024", "30000", "9000")),
        (Sched(65535, 2), ("262140", "100000", "2000")),  # small cap: 100 ms period
        (Sched(1, 100), ("4", "30000", "30000")),
        (Sched(256, 0), ("1024", "100000", "-1")),  # uncapped again
    ]:
        cg.apply(sched, vcpus=1)
        assert (read(f"{cg.path}/cpu.shares"), read(f"{cg.path}/cpu.cfs_period_us"),
                read(f"{cg.path}/cpu.cfs_quota_us")) == (shares, period, quota)
        assert cg.threads(cg.vcpu_path(0)) == load.tids[:1]


def test_parent_weighs_the_sum_of_its_domains(root):
    a, b = DomainCgroup("a", root=root), DomainCgroup("b", root=root)
    a.apply(Sched(weight=512), vcpus=1)
    assert read(f"{root}/cpu.shares") == "2048"
    b.apply(Sched(weight=768), vcpus=1)
    assert read(f"{root}/cpu.shares") == "5120"
    b.apply(Sched(weight=65535), vcpus=1)
    assert read(f"{root}/cpu.shares") == "262144"  # the v1 maximum
    b.remove()
    assert read(f"{root}/cpu.shares") == "2048"
    a.remove()
    assert read(f"{root}/cpu.shares") == "1024"  # the kernel's default when empty


def test_apply_rejects_a_cap_above_the_domains_vcpus(root):
    cg = DomainCgroup("web", root=root)
    with pytest.raises(ConfigError, match="150"):
        cg.apply(Sched(cap=150), vcpus=1)
    with pytest.raises(ConfigError):
        cg.apply({"weight": 256}, vcpus=1)
    assert not os.path.exists(cg.path)  # refused before anything was written


def test_place_a_missing_thread_is_a_host_error(root, load):
    cg = DomainCgroup("web", root=root)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(HostError, match=f"thread {dead.pid}.*does not exist"):
        cg.place([dead.pid], [])
    with pytest.raises(ConfigError):
        cg.place(["12"], [])


def test_remove_moves_threads_out_and_leaves_nothing(root, load):
    cg = DomainCgroup("web", root=root)
    cg.place(load.tids[:2], load.tids[2:] + [load.pid])
    cg.apply(Sched(cap=50), vcpus=2)
    cg.remove()
    assert [d for d in os.listdir(root) if os.path.isdir(f"{root}/{d}")] == []
    for tid in load.tids + [load.pid]:
        assert cpu_cgroup_of(load.pid, tid) == "/"  # back where the tree hangs from
    cg.remove()  # idempotent
    assert load.process.poll() is None  # the process lives on, unconstrained


def test_remove_after_sigkill(root):
    with Load(2) as load:
        cg = DomainCgroup("web", root=root)
        cg.place(load.tids[:1], load.tids[1:] + [load.pid])
        cg.apply(Sched(weight=1024, cap=30), vcpus=1)
        os.kill(load.pid, signal.SIGKILL)
        load.process.wait()
    DomainCgroup("web", root=root).remove()  # a fresh handle, as after a VMM crash
    assert not os.path.exists(f"{root}/web")


def test_remove_of_an_unreaped_killed_process(root):
    load = Load(2)
    try:
        cg = DomainCgroup("web", root=root)
        cg.place(load.tids, [load.pid])
        os.kill(load.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while read(f"/proc/{load.pid}/stat").split(") ")[1][0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        cg.remove()
        assert not os.path.exists(cg.path)
    finally:
        load.stop()


def test_no_write_access_is_a_clear_host_error(root):
    os.mkdir(root)  # exists, owned by root: an unprivileged user cannot create cgroups in it
    script = (
        "import os\n"
        "from xvm.errors import HostError\n"
        "from xvm.sched import DomainCgroup, Sched, detect, pin_thread\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter may live under /root\n"
        f"cg = DomainCgroup('web', root={root!r})\n"
        "try:\n"
        "    cg.apply(Sched(weight=512), vcpus=1)\n"
        "except HostError as e:\n"
        "    print('apply:', e.errno, e)\n"
        "try:\n"
        "    detect()\n"
        "except HostError as e:\n"
        "    print('detect:', e)\n"
        "cpu = min(os.sched_getaffinity(0))\n"
        "print('pinned:', sorted(pin_thread(os.getpid(), {cpu})) == [cpu])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
    assert f"apply: 13 cannot create cgroup {root}/web: Permission denied (no write access" in out
    assert f"detect: the cgroup v1 cpu controller at {V1} is not writable" in out
    assert "pinned: True" in out  # pinning needs no cgroup access


def test_pin_thread_reads_back_from_the_kernel(load):
    cpus = sorted(host_cpus())
    for want in ({cpus[-1]}, set(cpus), {cpus[0]}):
        assert pin_thread(load.tids[0], want) == want
        assert thread_affinity(load.tids[0]) == want
        assert cpus_allowed_list(load.pid, load.tids[0]) == want
    assert thread_affinity(load.tids[1]) == set(cpus)  # siblings are untouched
    pin_thread(load.tids[1], f"{cpus[-1]}")
    assert cpus_allowed_list(load.pid, load.tids[1]) == {cpus[-1]}
    # A busy pinned thread is seen running on its CPU (field 39 of stat).
    time.sleep(0.3)
    assert int(read(f"/proc/{load.pid}/task/{load.tids[1]}/stat").rsplit(")", 1)[1].split()[36]) == cpus[-1]


def test_pin_thread_errors(load):
    with pytest.raises(ConfigError, match="empty"):
        pin_thread(load.tids[0], set())
    with pytest.raises(ConfigError, match=str(max(host_cpus()) + 1)):
        pin_thread(load.tids[0], {max(host_cpus()) + 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(HostError, match="does not exist"):
        pin_thread(dead.pid, {0})

"""xvm.sched wired into the control plane, with real busy guests: cgroups and thread placement
read back from /proc, live changes, pinning, cleanup after destroy / power-off / SIGKILL, bad
inputs, over xvmd too, and a capped busy domain's CPU time."""
import itertools
import os
import signal
import time

import pytest

import xvm
from xvm.sched import CGROUP_ROOT_ENV, cpu_time_ns, host_cpus

V1 = "/sys/fs/cgroup/cpu"
pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.access(V1, os.W_OK)), reason="needs a writable cgroup v1 cpu controller")
CPUS = sorted(host_cpus())
_counter = itertools.count()


@pytest.fixture(autouse=True)
def cgroot(monkeypatch):
    """A private cgroup root for this test's domains (the VMM processes inherit it)."""
    path = f"{V1}/xvm-t{os.getpid()}-{next(_counter)}"
    monkeypatch.setenv(CGROUP_ROOT_ENV, path)
    yield path
    left = [d for d in (os.listdir(path) if os.path.isdir(path) else []) if os.path.isdir(f"{path}/{d}")]
    if os.path.isdir(path):
        os.rmdir(path)
    assert not left, f"cgroups left behind: {left}"


def cfg(guest, name="s", **kw):
    kw.setdefault("memory_mib", 32)
    return xvm.DomainConfig(name=name, kernel=guest("busy"), cmdline="shift=30", **kw)


def cgroup_of(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    raise AssertionError("no cpu line")


def read(path):
    with open(path) as f:
        return f.read().strip()


def gone(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_placement_files_and_pins(host, guest, cgroot):
    dom = host.create(cfg(guest, vcpus=2, sched=xvm.Sched(weight=512, cap=150),
                          vcpu_pins={0: {CPUS[0]}}, emulator_pin={CPUS[-1]}))
    info, pid = dom.info(), dom.info()["pid"]
    base = f"{cgroot}/{dom.uuid}"
    rel = base[len(V1):]
    assert read(f"{base}/cpu.shares") == "2048"
    assert read(f"{base}/cpu.cfs_period_us") == "30000" and read(f"{base}/cpu.cfs_quota_us") == "45000"
    tids = info["vcpu_thread_ids"]
    assert [cgroup_of(pid, t) for t in tids] == [f"{rel}/vcpu0", f"{rel}/vcpu1"]
    time.sleep(0.7)  # a sweep
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) not in tids]
    assert others and all(cgroup_of(pid, t) == f"{rel}/emulator" for t in others)
    assert all(os.sched_getaffinity(t) == {CPUS[-1]} for t in others)
    vcpus = dom.vcpus()
    assert [v.number for v in vcpus] == [0, 1] and vcpus[0].affinity == {CPUS[0]}
    assert os.sched_getaffinity(tids[0]) == {CPUS[0]}
    assert dom.scheduler() == xvm.Sched(512, 150)
    # live changes, no pause
    t0 = cpu_time_ns(pid, tids[0])  # the busy guest runs on vCPU 0
    dom.set_scheduler(weight=1024, cap=50, config=False)
    assert read(f"{base}/cpu.shares") == "4096" and read(f"{base}/cpu.cfs_quota_us") == "15000"
    assert dom.state is xvm.DomainState.RUNNING and dom.scheduler() == xvm.Sched(1024, 50)
    assert dom.pin_vcpu(1, {CPUS[-1]}) == {CPUS[-1]}
    assert os.sched_getaffinity(tids[1]) == {CPUS[-1]}
    dom.pin_emulator(str(CPUS[0]))
    assert all(os.sched_getaffinity(t) == {CPUS[0]} for t in others if os.path.exists(f"/proc/{pid}/task/{t}"))
    time.sleep(0.3)
    assert cpu_time_ns(pid, tids[0]) > t0  # it kept running
    dom.destroy()
    assert not os.path.exists(base)


def test_bad_inputs(host, guest):
    dom = host.define(cfg(guest, "bad"))
    with pytest.raises(xvm.StateError, match="live=False"):
        dom.set_scheduler(weight=512)
    assert dom.set_scheduler(weight=512, live=False) == xvm.Sched(512, 0)
    assert dom.config.sched == xvm.Sched(512, 0) and dom.scheduler() == xvm.Sched(512, 0)
    assert [v.state for v in dom.vcpus()] == ["offline"]
    dom.start()
    for call, match in [(lambda: dom.set_scheduler(weight=0), "weight"),
                        (lambda: dom.set_scheduler(cap=-1), "-1"),
                        (lambda: dom.set_scheduler(cap=200, config=False), "200"),
                        (lambda: dom.pin_vcpu(1, {0}), "vCPU 1"),
                        (lambda: dom.pin_vcpu(0, []), "empty"),
                        (lambda: dom.pin_vcpu(0, {max(CPUS) + 1}), str(max(CPUS) + 1)),
                        (lambda: dom.pin_emulator("x"), "x")]:
        with pytest.raises(xvm.ConfigError, match=match):
            call()
    assert dom.scheduler() == xvm.Sched(512, 0)
    dom.destroy()


def test_cleanup_after_power_off_and_sigkill(host, guest, cgroot):
    off = host.create(xvm.DomainConfig(name="off", memory_mib=32, kernel=guest("poweroff")))
    off.wait(timeout=20)
    # A confined VMM empties its cgroup; the fork server removes it once the VMM has exited.
    assert gone(f"{cgroot}/{off.uuid}")
    dom = host.define(cfg(guest, "k", sched=xvm.Sched(weight=300)))
    dom.start()
    assert os.path.isdir(f"{cgroot}/{dom.uuid}")
    os.kill(dom.info()["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while dom.state is not xvm.DomainState.CRASHED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dom.state is xvm.DomainState.CRASHED
    assert not os.path.exists(f"{cgroot}/{dom.uuid}")


def test_no_cgroup_access(host, guest, monkeypatch, tmp_path):
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(tmp_path))  # not on a cgroup mount: no cpu controller
    with pytest.raises(xvm.HostError, match="needs the cgroup cpu controller"):
        host.create(cfg(guest, "w", sched=xvm.Sched(cap=30)))
    dom = host.create(cfg(guest, "d", vcpu_pins={0: {CPUS[0]}}))  # default settings: fine
    assert dom.vcpus()[0].affinity == {CPUS[0]}
    with pytest.raises(xvm.HostError, match="without cgroups"):
        dom.set_scheduler(weight=512, config=False)
    dom.destroy()


def test_over_any_host(any_host, guest):
    dom = any_host.define(cfg(guest, "r"))
    dom.start()
    dom.set_scheduler(weight=768)
    assert dom.scheduler() == xvm.Sched(768, 0) and dom.config.sched == xvm.Sched(768, 0)
    assert [v.state for v in dom.vcpus()] and dom.vcpus()[0].cpu_time_ns > 0
    dom.destroy()


def test_a_capped_busy_domain_stays_under_its_cap(host, guest):
    dom = host.create(cfg(guest, "cap", sched=xvm.Sched(cap=30)))
    dom.console.expect("ready", timeout=10)
    before, t0 = dom.vcpus()[0].cpu_time_ns, time.monotonic()
    time.sleep(2.0)
    used = (dom.vcpus()[0].cpu_time_ns - before) / 1e9 / (time.monotonic() - t0)
    assert used < 0.30 + 0.05, used
    dom.destroy()


def test_a_capped_two_vcpu_domain_uses_both_vcpus_and_stays_under_its_cap(host, guest):
    dom = host.create(xvm.DomainConfig(name="cap150", memory_mib=32, kernel=guest("busy"), vcpus=2,
                                       cmdline="shift=30 smp=1", sched=xvm.Sched(cap=150)))
    dom.console.expect("busy: printing", timeout=10)
    before, t0 = [v.cpu_time_ns for v in dom.vcpus()], time.monotonic()
    time.sleep(2.0)
    used = [(v.cpu_time_ns - b) / 1e9 / (time.monotonic() - t0) for v, b in zip(dom.vcpus(), before)]
    assert all(u > 0.1 for u in used), f"a vCPU is not busy: {used}"  # the guest spins on both
    assert sum(used) < 1.50 + 0.10, used
    dom.destroy()

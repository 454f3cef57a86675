"""xvm.sched accounting from the kernel's per-thread records: states, last CPU, exact CPU time."""
import os
import subprocess
import sys
import threading
import time

import pytest

from xvm.errors import HostError
from xvm.sched import VcpuInfo, cpu_time_ns, format_vcpuinfo, host_cpus, pin_thread, thread_stat, vcpu_infos
from xvm.sched.loadgen import Load


def test_cpu_time_is_the_schedulers_exact_runtime_not_ticks():
    """A thread that runs in 0.3 ms bursts (far below the 4 ms tick) is charged exactly."""
    done, result = threading.Event(), {}

    def bursts():
        result["tid"] = threading.get_native_id()
        for _ in range(200):
            end = time.thread_time_ns() + 300_000
            while time.thread_time_ns() < end:
                pass
            time.sleep(0.001)
        result["own"] = time.thread_time_ns()
        done.set()
        time.sleep(1)  # blocked: its runtime is settled while the test reads it

    thread = threading.Thread(target=bursts)
    thread.start()
    assert done.wait(30)
    measured = cpu_time_ns(os.getpid(), result["tid"])
    thread.join()
    assert result["own"] >= 60_000_000
    assert abs(measured - result["own"]) < 200_000  # tick sampling would be off by milliseconds


def test_vcpu_infos_of_busy_threads():
    cpu = max(host_cpus())
    with Load(2) as load:
        pin_thread(load.tids[0], {cpu})
        first = vcpu_infos(load.pid, load.tids)
        time.sleep(0.5)
        infos = vcpu_infos(load.pid, load.tids)
    assert [i.number for i in infos] == [0, 1]
    assert infos[0].affinity == {cpu} and infos[1].affinity == host_cpus()
    assert infos[0].cpu == cpu
    for before, after in zip(first, infos):
        assert after.cpu_time_ns > before.cpu_time_ns > 0
        assert after.state in ("running", "blocked")  # busy; "blocked" only for a moment on the GIL
    assert sum(i.state == "running" for i in infos) >= 1
    assert "CPU Affinity:" in format_vcpuinfo(infos)


def test_sleeping_stopped_gone_and_missing_threads():
    sleeper = subprocess.Popen([sys.executable, "-c", "print(flush=True); import time; time.sleep(60)"],
                               stdout=subprocess.PIPE)
    try:
        sleeper.stdout.readline()
        deadline = time.monotonic() + 10  # it runs on from print() into sleep(), slowly under load
        while thread_stat(sleeper.pid, sleeper.pid)[0] != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        (info,) = vcpu_infos(sleeper.pid, [sleeper.pid])
        assert info.state == "blocked" and info.cpu in host_cpus()
        os.kill(sleeper.pid, 19)  # SIGSTOP
        while thread_stat(sleeper.pid, sleeper.pid)[0] != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread_stat(sleeper.pid, sleeper.pid)[0] == "T"
        assert vcpu_infos(sleeper.pid, [sleeper.pid])[0].state == "paused"
    finally:
        sleeper.kill()
        sleeper.wait()
    gone, missing = vcpu_infos(sleeper.pid, [sleeper.pid, None])
    assert gone == VcpuInfo(0, "offline", 0, -1, frozenset())
    assert missing == VcpuInfo(1, "offline", 0, -1, frozenset())
    with pytest.raises(HostError, match="does not exist"):
        cpu_time_ns(sleeper.pid, sleeper.pid)


def test_thread_stat_survives_odd_command_names():
    script = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); "
              "print(flush=True); time.sleep(30)")
    odd = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        odd.stdout.readline()
        assert "a) b (c" in open(f"/proc/{odd.pid}/stat").read()
        deadline = time.monotonic() + 5
        while thread_stat(odd.pid, odd.pid)[0] != "S" and time.monotonic() < deadline:
            time.sleep(0.01)  # it runs on from print() into sleep()
        state, cpu = thread_stat(odd.pid, odd.pid)
        assert state == "S" and cpu in host_cpus()
    finally:
        odd.kill()
        odd.wait()

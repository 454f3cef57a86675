#!/usr/bin/env python3
"""The cost of confinement (xvm.vmm.jail: seccomp filter, namespace, uid) on the PIO
exit round trip and on block IOPS, with and without, in process-mode domains (run as root).

    python3 benchmarks/bench_confine.py [--exits N] [--ios N] [--rounds R]

The `pio_bench` guest writes N times to the UART scratch port; each write exits to the
VMM.  Per exit: wall time and the vCPU thread's CPU time from
/proc/PID/task/TID/schedstat (holds up on a loaded machine).  Confined and unconfined
runs alternate (XVM_CONFINE=1/0 in the host's environment).

Block: the `blk` guest's `mode=bench op=randread bs=4096` on a 64 MiB image in the page
cache (cache=none is O_DIRECT: the filter's cost would hide behind the disk), at depth 1
and 8; IOPS as the guest measures them (TSC).  Every request crosses the filter several
times in the device worker (eventfd read, preadv, irqfd write).  The last line is the
confined/unconfined ratio of the medians.
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import guest, summary  # noqa: E402
from xvm.vmm import jail  # noqa: E402


def cpu_ns(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def pio(host, image, exits, confine):
    os.environ["XVM_CONFINE"] = "1" if confine else "0"
    dom = host.create(xvm.DomainConfig(name="pio", memory_mib=64, kernel=image, cmdline=f"count={exits}"))
    try:
        pid = dom.info()["pid"]
        tid = dom.info()["vcpu_thread_ids"][0]
        dom.console.expect("bench start", timeout=30)
        t0, c0 = time.perf_counter(), cpu_ns(pid, tid)
        last = [c0]
        done = threading.Event()

        def sample():  # the guest powers off after "bench done": its thread may be gone by then
            while not done.is_set():
                try:
                    last[0] = cpu_ns(pid, tid)
                except OSError:
                    return
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        dom.console.expect("bench done", timeout=600)
        wall = time.perf_counter() - t0
        try:
            last[0] = cpu_ns(pid, tid)
        except OSError:
            pass
        done.set()
        sampler.join()
        cpu = last[0] - c0
    finally:
        try:
            dom.destroy()
        except xvm.errors.XvmError:
            pass  # it powered off by itself: gone already
    return wall / exits * 1e9, cpu / exits


BENCH_DONE = r"blk: bench randread (\d+) ios in (\d+) ns"


def randread(host, image, disk, ios, depth, confine):
    os.environ["XVM_CONFINE"] = "1" if confine else "0"
    dom = host.define(xvm.DomainConfig(
        name="blk", memory_mib=64, kernel=image, disks=[xvm.Disk(disk, cache="writeback")],
        cmdline=f"mode=bench op=randread bs=4096 count={ios} depth={depth}"))
    try:
        dom.start()
        match = dom.console.expect(r"blk: bench start", timeout=60)
        pid = dom.info()["pid"]
        if pid is not None:  # still running (it is, unless --ios is tiny)
            assert (jail.status_of(pid)["Seccomp"] == "2") == confine, "XVM_CONFINE was not followed"
        match = dom.console.expect(BENCH_DONE, timeout=600)
    finally:
        try:
            dom.destroy()
        except xvm.StateError:
            pass  # it powered off by itself
        dom.undefine()
    count, ns = int(match.group(1)), int(match.group(2))
    return count / (ns / 1e9)


def make_image(path, mib=64):
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    with open(path, "rb") as f:  # into the page cache
        while f.read(16 << 20):
            pass
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--ios", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_confine: confinement needs root")
    image, blk = guest("pio_bench"), guest("blk")
    results = {True: [], False: []}
    iops = {(confine, depth): [] for confine in (False, True) for depth in (1, 8)}
    with tempfile.TemporaryDirectory(prefix="xvm-bc-", dir="/tmp") as state, \
            xvm.connect(state_dir=state) as host:
        disk = make_image(os.path.join(state, "disk.img"))
        for _ in range(args.rounds):
            for confine in (False, True):
                results[confine].append(pio(host, image, args.exits, confine))
                for depth in (1, 8):
                    iops[confine, depth].append(randread(host, blk, disk, args.ios, depth, confine))
    for confine in (False, True):
        label = "confined  " if confine else "unconfined"
        print(f"PIO exit, {label}: wall {summary([w for w, _ in results[confine]], 'ns')}; "
              f"vCPU CPU {summary([c for _, c in results[confine]], 'ns')}")
    for depth in (1, 8):
        for confine in (False, True):
            label = "confined  " if confine else "unconfined"
            print(f"randread 4k qd{depth}, {label}: {summary(iops[confine, depth], 'IOPS')}")
        ratio = statistics.median(iops[True, depth]) / statistics.median(iops[False, depth])
        print(f"randread 4k qd{depth}: confined/unconfined = {ratio:.3f}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()

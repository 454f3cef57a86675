#!/usr/bin/env python3
"""Foundation benchmarks: PIO exit round trip, start-to-first-byte, RSS per domain.

    python3 benchmarks/bench_foundation.py [--exits N] [--rounds R] [--domains D]

1. PIO exit round trip: the `pio_bench` guest writes N times to the UART
   scratch port; each write exits to the VMM. xvm and the small C VMM
   (benchmarks/cvmm) run the same guest image in the same run, alternating;
   the ratio is xvm / C, in wall time and in CPU time of the vCPU thread
   (the latter holds up on a loaded machine).
2. Time from `Domain.start()` to the guest's first UART byte.
3. Host RSS per additional running domain, with D domains running.
"""
import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import cvmm, guest, summary  # noqa: E402


def xvm_pio(host, image, exits):
    """(wall ns, vCPU-thread CPU ns) per PIO exit."""
    dom = host.define(xvm.DomainConfig(name="pio", memory_mib=64, kernel=image, cmdline=f"count={exits}"))
    try:
        dom.start()
        clock = time.pthread_getcpuclockid(dom.machine.vm.vcpus[0].thread_id)
        dom.console.expect("bench start", timeout=30)
        t0, c0 = time.perf_counter(), time.clock_gettime(clock)
        dom.console.expect("bench done", timeout=600)
        elapsed, cpu = time.perf_counter() - t0, time.clock_gettime(clock) - c0
        dom.wait(timeout=30)
    finally:
        if dom.state is not xvm.DomainState.SHUTOFF:
            dom.destroy()
        dom.undefine()
    return elapsed / exits * 1e9, cpu / exits * 1e9


def c_pio(binary, image, exits):
    """(wall ns, vCPU-thread CPU ns) per PIO exit, as the C VMM reports them."""
    out = subprocess.run([binary, image, f"count={exits}"], capture_output=True, text=True, timeout=600).stderr
    wall = float(re.search(r"([\d.]+) ns per PIO exit", out).group(1))
    cpu = float(re.search(r"cpu time [\d.]+ ms: ([\d.]+) ns per operation", out).group(1))
    return wall, cpu


def start_to_first_byte(host, image, rounds):
    times = []
    for i in range(rounds):
        dom = host.define(xvm.DomainConfig(name=f"first{i}", memory_mib=64, kernel=image))
        t0 = time.perf_counter()
        dom.start()
        dom.console.expect(".", timeout=30)
        times.append((time.perf_counter() - t0) * 1e3)
        dom.wait(timeout=30)
        dom.undefine()
    return times


def rss_kib():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def rss_per_domain(host, image, count):
    base = rss_kib()
    doms = []
    for i in range(count):
        dom = host.define(xvm.DomainConfig(name=f"rss{i}", memory_mib=64, kernel=image, cmdline="shift=30"))
        dom.start()
        dom.console.expect("ready", timeout=30)
        doms.append(dom)
    time.sleep(0.5)
    total = rss_kib() - base
    for dom in doms:
        dom.destroy()
        dom.undefine()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--domains", type=int, default=10)
    args = ap.parse_args()

    pio_image, hello, busy = guest("pio_bench"), guest("hello"), guest("busy")
    binary = cvmm()
    with xvm.connect(in_process=True) as host:  # reads vCPU and device internals
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(xvm_pio(host, pio_image, args.exits))
            theirs.append(c_pio(binary, pio_image, args.exits))
        for i, kind in enumerate(("wall time", "vCPU-thread CPU time")):
            print(f"PIO exit round trip, {kind}: xvm {summary([x[i] / 1e3 for x in ours], 'us')}")
            print(f"PIO exit round trip, {kind}: C   {summary([x[i] / 1e3 for x in theirs], 'us')}")
            print(f"PIO exit ratio xvm/C, {kind}: {summary([a[i] / b[i] for a, b in zip(ours, theirs)], 'x')}")
        print(f"start() to first UART byte: {summary(start_to_first_byte(host, hello, args.rounds), 'ms')}")
        print(f"RSS per running domain ({args.domains} domains, 64 MiB each): "
              f"{rss_per_domain(host, busy, args.domains) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The cost of confinement (xvm.vmm.jail: seccomp filter, namespace, uid) on the PIO
exit round trip, with and without, in process-mode domains (run as root).

    python3 benchmarks/bench_confine.py [--exits N] [--rounds R]

The `pio_bench` guest writes N times to the UART scratch port; each write exits to the
VMM.  Per exit: wall time and the vCPU thread's CPU time from
/proc/PID/task/TID/schedstat (holds up on a loaded machine).  Confined and unconfined
runs alternate (XVM_CONFINE=1/0 in the host's environment).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import guest, summary  # noqa: E402


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
        dom.console.expect("bench done", timeout=600)
        wall, cpu = time.perf_counter() - t0, cpu_ns(pid, tid) - c0
    finally:
        try:
            dom.destroy()
        except xvm.errors.XvmError:
            pass
    return wall / exits * 1e9, cpu / exits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_confine: confinement needs root")
    image = guest("pio_bench")
    results = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="xvm-bc-", dir="/tmp") as state, \
            xvm.connect(state_dir=state) as host:
        for _ in range(args.rounds):
            for confine in (False, True):
                results[confine].append(pio(host, image, args.exits, confine))
    for confine in (False, True):
        label = "confined  " if confine else "unconfined"
        print(f"PIO exit, {label}: wall {summary([w for w, _ in results[confine]], 'ns')}; "
              f"vCPU CPU {summary([c for _, c in results[confine]], 'ns')}")


if __name__ == "__main__":
    main()

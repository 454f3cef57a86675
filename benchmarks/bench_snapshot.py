#!/usr/bin/env python3
"""Save, and restore to running: xvm beside QEMU, same guest, same memory size, in one run.

    PYTHONPATH=$PWD python3 benchmarks/bench_snapshot.py [--sizes 256,1024] [--rounds 3]

The guest is the busy test guest (a counter it prints).  For each size and round:

* xvm, as users run it (``xvm.connect()``: a VMM process per domain): ``dom.save(path)`` and
  ``host.restore(path)`` timed in the caller, the restore including the new VMM process's
  start; then the same in process (``xvm.connect(in_process=True)``): the machine and the
  host's store and cgroup work without a process start; and the machine alone ("xvm
  machine", the best of 3 restores of one file): the file checked, RAM mapped ``MAP_PRIVATE``
  to be faulted in lazily, vCPU and device state loaded, vCPUs started -- what Firecracker's
  published ~3 ms counts, and the figure the issue's 10 ms goal is about.
* QEMU (``-accel kvm -M microvm``): QMP ``migrate "exec:cat > FILE"`` until completed (it
  pauses the guest for the last pass and leaves it paused; a guest paused first would be
  restored paused), and a new QEMU with ``-incoming "exec:cat FILE"`` from its start until QMP
  ``query-status`` says running (process start included, like xvm's first figure).

Each restored guest must print a count above the last one before the save ("goes on"); on a
PVM host QEMU does not carry PVM's paravirtual MSRs, so its restored guest may not.  Prints
medians and ratios; asserts nothing.
"""
import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import guest  # noqa: E402
from bench_migrate import QEMU, Qmp, qemu, wait_log  # noqa: E402

import xvm  # noqa: E402

COUNT = re.compile(rb"count (\d+)")
CMDLINE = "shift=26"


def _counts(data):
    return [int(n) for n in COUNT.findall(data)]


def _goes_on(read, before, timeout=10):
    """True once the console (``read()`` -> bytes) shows a count above ``before``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n > before for n in _counts(read())):
            return True
        time.sleep(0.02)
    return False


def run_xvm(work, size_mib, in_process):
    state = os.path.join(work, f"xvm-{'inproc' if in_process else 'proc'}-{time.monotonic_ns()}")
    path = os.path.join(work, "xvm.snap")
    with xvm.connect(state_dir=state, in_process=in_process) as host:
        dom = host.create(xvm.DomainConfig(name="snap", kernel=guest("busy"), cmdline=CMDLINE,
                                           memory_mib=size_mib))
        try:
            dom.console.expect(r"count \d+\n", timeout=30)
            time.sleep(0.3)
            t = time.perf_counter()
            dom.save(path)
            save_ms = (time.perf_counter() - t) * 1000
            before = max(_counts(dom.console.log()))
            mark = len(dom.console.log())
            t = time.perf_counter()
            restored = host.restore(path)
            restore_ms = (time.perf_counter() - t) * 1000
            on = _goes_on(lambda: restored.console.log()[mark:], before)
            file_mib = os.stat(path).st_blocks * 512 / (1 << 20)
            restored.destroy()
        finally:
            for d in host.domains():
                if d.state is not xvm.DomainState.SHUTOFF:
                    d.destroy()
    shutil.rmtree(state, ignore_errors=True)
    return {"save_ms": save_ms, "restore_ms": restore_ms, "file_mib": file_mib, "goes_on": on}


def run_machine(work, size_mib, rounds=3):
    """The machine alone, as a VMM restores it: the file checked, RAM mapped to be faulted in
    lazily, vCPU and device state loaded, vCPUs started (what Firecracker's ~3 ms counts); no
    process, store or cgroup work.  The best of ``rounds`` restores of one file."""
    from xvm.vmm import actions as A
    from xvm.vmm.process import machine_factory

    state = os.path.join(work, f"xvm-machine-{time.monotonic_ns()}")
    path = os.path.join(work, "machine.snap")
    best, on = None, False
    with xvm.connect(state_dir=state, in_process=True) as host:
        dom = host.create(xvm.DomainConfig(name="snap", kernel=guest("busy"), cmdline=CMDLINE,
                                           memory_mib=size_mib))
        dom.console.expect(r"count \d+\n", timeout=30)
        time.sleep(0.3)
        config = dom.config
        dom.save(path)
        before = max(_counts(dom.console.log()))
        build = machine_factory(host.kvm)
        for _ in range(rounds):
            out = bytearray()
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                t = time.perf_counter()
                machine = build(config, out.extend, lambda *a: None, restore=A.Restore(path=path, fd=fd))
                machine.start()
                ms = (time.perf_counter() - t) * 1000
                on = _goes_on(lambda: bytes(out), before) or on
                machine.close()
            finally:
                os.close(fd)
            best = ms if best is None else min(best, ms)
    shutil.rmtree(state, ignore_errors=True)
    return {"save_ms": float("nan"), "restore_ms": best, "file_mib": os.stat(path).st_blocks * 512 / (1 << 20),
            "goes_on": on}


def run_qemu(work, size_mib):
    kernel = guest("busy")
    path = os.path.join(work, "qemu.snap")
    proc, log, qmp_path = qemu(work, f"save{size_mib}", size_mib, kernel, CMDLINE)
    try:
        wait_log(log, "count")
        time.sleep(0.3)
        q = Qmp(qmp_path)
        t = time.perf_counter()
        q.call("migrate", uri=f"exec:cat > {path}")
        while (info := q.call("query-migrate")).get("status") not in ("completed", "failed", "cancelled"):
            time.sleep(0.001)
        save_ms = (time.perf_counter() - t) * 1000
        if info["status"] != "completed":
            raise SystemExit(f"QEMU save {info['status']}: {info}")
        with open(log, "rb") as f:
            before = max(_counts(f.read()))
        q.close()
    finally:
        proc.kill()
        proc.wait(10)
    t = time.perf_counter()
    proc, log, qmp_path = qemu(work, f"restore{size_mib}", size_mib, kernel, CMDLINE,
                               ["-incoming", f"exec:cat {path}"])
    try:
        q = Qmp(qmp_path)
        while (status := q.call("query-status").get("status")) != "running":
            if status not in ("inmigrate", "prelaunch") or time.perf_counter() - t > 60:
                raise SystemExit(f"QEMU restore: the guest is {status}")
            time.sleep(0.001)
        restore_ms = (time.perf_counter() - t) * 1000

        def read():
            with open(log, "rb") as f:
                return f.read()
        on = _goes_on(read, before, timeout=5)
        q.close()
    finally:
        proc.kill()
        proc.wait(10)
    return {"save_ms": save_ms, "restore_ms": restore_ms, "file_mib": os.stat(path).st_blocks * 512 / (1 << 20),
            "goes_on": on}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024", help="guest memory sizes in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-snapshot-", dir="/var/tmp")  # a disk, not tmpfs
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; QEMU: {QEMU or 'not installed'}")
    header = f"{'case':<10}{'VMM':<20}{'save ms':>9}{'restore ms':>12}{'file MiB':>10}  guest goes on"
    print(header)
    print("-" * len(header))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            results = {"xvm process": [], "xvm in-process": [], "xvm machine": [], "qemu": []}
            for _ in range(args.rounds):
                results["xvm process"].append(run_xvm(work, size, in_process=False))
                results["xvm in-process"].append(run_xvm(work, size, in_process=True))
                results["xvm machine"].append(run_machine(work, size))
                if QEMU:
                    results["qemu"].append(run_qemu(work, size))
            for vmm, runs in results.items():
                if not runs:
                    continue
                med = {k: statistics.median(r[k] for r in runs) for k in ("save_ms", "restore_ms", "file_mib")}
                on = sum(r["goes_on"] for r in runs)
                save = "-" if math.isnan(med["save_ms"]) else f"{med['save_ms']:.1f}"
                print(f"{f'{size} MiB':<10}{vmm:<20}{save:>9}{med['restore_ms']:>12.1f}"
                      f"{med['file_mib']:>10.1f}  {on}/{len(runs)}")
            if results["qemu"]:
                q = {k: statistics.median(r[k] for r in results["qemu"]) for k in ("save_ms", "restore_ms")}
                for vmm in ("xvm process", "xvm in-process", "xvm machine"):
                    x = {k: statistics.median(r[k] for r in results[vmm]) for k in ("save_ms", "restore_ms")}
                    save = "-" if math.isnan(x["save_ms"]) else f"{x['save_ms'] / q['save_ms']:.2f}x"
                    print(f"{'':<10}{vmm + '/qemu':<20}{save:>9}"
                          f"{x['restore_ms'] / q['restore_ms']:>11.2f}x")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Control-plane benchmarks: start latency, memory per VMM, domain churn, action round trip.

    python3 benchmarks/bench_control.py [--rounds R] [--domains D]

Each figure is printed beside its peer, measured in the same run, alternating:

1. ``start()`` to the test guest's first UART byte: a VMM process per domain (the
   default), the VMM in the caller's process (``in_process=True``), and
   ``qemu-system-x86_64 -M microvm -accel kvm -kernel`` booting the same ELF.
2. Host memory per running VMM process beyond guest RAM: PSS from
   /proc/PID/smaps_rollup, less the guest RAM it maps (xvm's guest RAM is a memfd:
   shared memory), beside QEMU's PSS for the same idle guest.
3. Domains defined, started (to the first byte) and destroyed per second, D small
   guests two at a time on 2 cores, beside QEMU started and killed the same way.
4. The round trip of a control action: pause + resume through the VMM's socket,
   and an Info request, beside the same through xvmd.
"""
import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import ROOT, guest, summary  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
QEMU_ARGS = ["-accel", "kvm", "-M", "microvm", "-m", "64", "-smp", "1", "-nodefaults",
             "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"]


def xvm_first_byte(host, image, name):
    dom = host.define(xvm.DomainConfig(name=name, memory_mib=64, kernel=image, cmdline="shift=40"))
    t0 = time.perf_counter()
    dom.start()
    dom.console.expect(".", timeout=30)
    elapsed = (time.perf_counter() - t0) * 1e3
    dom.destroy()
    dom.undefine()
    return elapsed


def qemu_start(image, append="shift=40"):
    """(Popen, ms to the first byte on its serial console)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([QEMU, *QEMU_ARGS, "-kernel", image, "-append", append],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or not os.read(proc.stdout.fileno(), 1):
        proc.kill()
        raise RuntimeError("qemu printed nothing")
    return proc, (time.perf_counter() - t0) * 1e3


def qemu_first_byte(image):
    proc, elapsed = qemu_start(image)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return elapsed


def smaps(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                fields[m.group(1)] = int(m.group(2))
    return fields


def memory(host, image, rounds):
    ours, theirs = [], []
    for i in range(rounds):
        dom = host.create(xvm.DomainConfig(name=f"mem{i}", memory_mib=64, kernel=image, cmdline="shift=40"))
        dom.console.expect("ready", timeout=30)
        time.sleep(0.3)
        rollup = smaps(dom.info()["pid"])
        ours.append((rollup["Pss"] - rollup.get("Pss_Shmem", 0)) / 1024)
        dom.destroy()
        proc, _ = qemu_start(image)
        time.sleep(0.3)
        theirs.append(smaps(proc.pid)["Pss"] / 1024)
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return ours, theirs


def churn(host, image, count):
    def one(i):
        dom = host.define(xvm.DomainConfig(name=f"churn{i}", memory_mib=32, kernel=image, cmdline="shift=40"))
        dom.start()
        dom.console.expect(".", timeout=60)
        dom.destroy()
        dom.undefine()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - t0)


def qemu_churn(image, count):
    def one(i):
        proc, _ = qemu_start(image)
        proc.kill()
        proc.wait()
        proc.stdout.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - t0)


def round_trips(host, image, n=200):
    dom = host.create(xvm.DomainConfig(name="rt", memory_mib=64, kernel=image, cmdline="shift=40"))
    dom.console.expect("ready", timeout=30)
    pause = []
    for _ in range(n):
        t0 = time.perf_counter()
        dom.pause()
        dom.resume()
        pause.append((time.perf_counter() - t0) * 1e6)
    info = []
    for _ in range(n):
        t0 = time.perf_counter()
        dom.info()
        info.append((time.perf_counter() - t0) * 1e6)
    dom.destroy()
    return pause, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--domains", type=int, default=20)
    args = ap.parse_args()
    image = guest("busy")
    state = tempfile.mkdtemp(prefix="xvm-bench-", dir="/tmp")
    os.environ["XVM_STATE_DIR"] = state
    daemon = None
    try:
        with xvm.connect() as proc_host, xvm.connect(in_process=True, state_dir=state + "/ip") as local:
            procs, inproc, qemu = [], [], []
            for i in range(args.rounds):
                procs.append(xvm_first_byte(proc_host, image, f"fb{i}"))
                inproc.append(xvm_first_byte(local, image, f"fbl{i}"))
                if QEMU:
                    qemu.append(qemu_first_byte(image))
            print(f"start() to first UART byte, VMM process:    {summary(procs, 'ms')}")
            print(f"start() to first UART byte, VMM in-process: {summary(inproc, 'ms')}")
            if qemu:
                print(f"start() to first UART byte, qemu microvm:  {summary(qemu, 'ms')}")
                print(f"ratio VMM process / qemu: {summary([a / b for a, b in zip(procs, qemu)], 'x')}")

            ours, theirs = memory(proc_host, image, min(args.rounds, 5))
            print(f"PSS per VMM process beyond guest RAM: {summary(ours, 'MiB')}")
            if QEMU:
                print(f"PSS of qemu microvm (same guest):     {summary(theirs, 'MiB')}")

            rate = churn(proc_host, image, args.domains)
            print(f"define+start+destroy, {args.domains} domains, 2 at a time: {rate:.1f} domains/s")
            if QEMU:
                print(f"qemu start+kill, {args.domains} guests, 2 at a time:       "
                      f"{qemu_churn(image, args.domains):.1f} guests/s")

            pause, info = round_trips(proc_host, image)
            print(f"pause+resume through the VMM socket: {summary(pause, 'us')}")
            print(f"info through the VMM socket:         {summary(info, 'us')}")

        sock = os.path.join(state, "xvmd.sock")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        daemon = subprocess.Popen([sys.executable, "-m", "xvm.daemon", "--state-dir", state + "/d",
                                   "--socket", sock], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        for _ in range(300):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        with xvm.connect(f"xvm+unix://{sock}") as remote:
            pause, info = round_trips(remote, image)
            print(f"pause+resume through xvmd:           {summary(pause, 'us')}")
            print(f"info through xvmd:                   {summary(info, 'us')}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()

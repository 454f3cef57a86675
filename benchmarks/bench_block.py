#!/usr/bin/env python3
"""Block I/O from a native-speed guest: xvm's virtio-blk against QEMU's, same guest, same image.

    python3 benchmarks/bench_block.py [--rounds N] [--image-mib M] [--quick]

The guest is tests/guests/blk.c (`mode=bench`): a polling virtio-mmio virtio-blk driver that
runs natively on this PVM host and times its I/O with the TSC.  Workloads: 4 KiB random reads
(IOPS) at queue depth 1 and 8, 1 MiB sequential reads and writes (MiB/s) at depth 1 and 4,
and random reads from a cold page cache (4 KiB at depth 8, 1 MiB at depth 4: the disk's
latency, where requests in flight together overlap their waits).
Each round runs every workload under xvm (in a child process, so the VMM owns a process as
QEMU does) and under `qemu-system-x86_64 -accel kvm -M microvm` with `virtio-blk-device`
(virtio-mmio version 2), alternating which goes first; both on the same raw image in the
host page cache (xvm cache="none", QEMU's default cache=writeback: neither uses O_DIRECT).

With XVM_BENCH_PROCESS=1 in the environment xvm runs as users run it, in a VMM process of
its own (``xvm.connect()``): the rates then compare process mode; its CPU figures count only
the client and mean nothing.

Host CPU per I/O is sampled from /proc/<pid>/task/<tid>/schedstat (ns) when the
guest prints "bench start" and when it prints its result: the whole VMM process, and the VMM
without its vCPU thread (the polling guest keeps its vCPU thread busy by design; what is left
is the device emulation's cost).  Prints medians and xvm/QEMU ratios; asserts nothing.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import guest  # noqa: E402

MiB = 1 << 20
MEMORY_MIB = 128
# name, op, block size, queue depth, count (full), count (--quick)
WORKLOADS = (
    ("randread 4k qd1", "randread", 4096, 1, 10000, 1000),
    ("randread 4k qd8", "randread", 4096, 8, 20000, 2000),
    ("seqread 1M qd1", "seqread", MiB, 1, 1024, 128),
    ("seqread 1M qd4", "seqread", MiB, 4, 1024, 128),
    ("seqwrite 1M qd4", "seqwrite", MiB, 4, 1024, 128),
    # "cold": the image's pages are dropped from the page cache before each run, so reads
    # wait for the disk and requests in flight together can overlap their waits.
    ("randread 4k qd8 cold", "randread", 4096, 8, 4000, 1000),
    ("randread 1M qd4 cold", "randread", MiB, 4, 128, 64),
)
RESULT = re.compile(r"blk: bench (\w+) (\d+) ios in (\d+) ns")


# --- the xvm child process ----------------------------------------------------------------------

def xvm_child(kernel, image, cmdline):
    """Run the guest under xvm in this process; the console goes to stdout line by line."""
    import xvm
    # In process by default: this child process is then the VMM (host CPU per I/O).
    # XVM_BENCH_PROCESS=1 runs it as users do, in a VMM process of its own (rates only).
    in_process = os.environ.get("XVM_BENCH_PROCESS") != "1"
    host = xvm.connect(in_process=in_process)
    dom = host.define(xvm.DomainConfig(name="bench-blk", memory_mib=MEMORY_MIB, kernel=kernel,
                                       cmdline=cmdline, disks=[xvm.Disk(image)]))
    dom.start()
    vcpus = [t.native_id for t in threading.enumerate() if t.name.startswith("xvm-vcpu")]
    if in_process:
        print(f"xvm-child vcpu-tids {' '.join(map(str, vcpus))}", flush=True)
    ended = threading.Event()

    def relay(event, payload):
        # Straight from the guest's output path: console.expect() holds a match at the
        # newest byte for a moment, which would shift the parent's CPU samples.
        if event == "data":
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
        elif event == "closed":
            ended.set()

    unsubscribe = dom.console.subscribe(relay)
    try:
        ended.wait(600)
    finally:
        unsubscribe()
        if dom.state is not xvm.DomainState.SHUTOFF:
            dom.destroy()
        dom.undefine()
        host.close()


# --- sampling a VMM process ---------------------------------------------------------------------

def _cpu_ns(pid, tid):
    """CPU time of one thread in ns (/proc/<pid>/task/<tid>/schedstat: on-CPU time first)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # the thread has exited


def _comm(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class Sample:
    """CPU time of the whole VMM (its live threads) and of its vCPU threads, in seconds."""

    def __init__(self, pid, vcpu_tids):
        self.wall = time.perf_counter()
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = []
        per_thread = {tid: _cpu_ns(pid, tid) for tid in tids}
        self.threads = per_thread
        self.total = sum(per_thread.values()) / 1e9
        self.vcpu = sum(per_thread.get(tid, 0) for tid in vcpu_tids) / 1e9


def run_vmm(vmm, argv, count):
    """Run one VMM until the guest reports; returns a dict of figures."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    vcpu_tids, start, console = [], None, []
    try:
        for line in proc.stdout:
            console.append(line)
            if line.startswith("xvm-child vcpu-tids"):
                vcpu_tids = [int(t) for t in line.split()[2:]]
            elif "blk: bench start" in line:
                if vmm == "qemu":
                    vcpu_tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")
                                 if re.fullmatch(r"CPU \d+/KVM", _comm(proc.pid, t))]
                start = Sample(proc.pid, vcpu_tids)
            elif (m := RESULT.search(line)) and start is not None:
                end = Sample(proc.pid, vcpu_tids)
                guest_ns = int(m.group(3))
                # threads that started during the run count from 0, ones that ended are lost
                total = sum(ns - start.threads.get(tid, 0) for tid, ns in end.threads.items()) / 1e9
                vcpu = end.vcpu - start.vcpu
                return {
                    "guest_s": guest_ns / 1e9,
                    "host_s": end.wall - start.wall,
                    "cpu_us_per_io": total / count * 1e6,
                    "cpu_us_per_io_no_vcpu": (total - vcpu) / count * 1e6 if vcpu_tids else float("nan"),
                }
            elif "blk: FAIL" in line:
                break
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    raise RuntimeError(f"{vmm}: no result (exit {proc.returncode})\nconsole: {''.join(console)[-2000:]}"
                       f"\nstderr: {err[-2000:]}")


def xvm_argv(kernel, image, cmdline):
    return [sys.executable, os.path.abspath(__file__), "--xvm-child", kernel, image, cmdline]


def qemu_argv(kernel, image, cmdline, fmt="raw"):
    return [
        "qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-m", f"{MEMORY_MIB}M", "-smp", "1",
        "-name", "bench-blk,debug-threads=on",  # names the vCPU thread "CPU 0/KVM"
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-global", "virtio-mmio.force-legacy=false",  # virtio 1.x (Version 2), as xvm
        "-drive", f"file={image},format={fmt},if=none,id=d0,cache=writeback,aio=threads",
        "-device", "virtio-blk-device,drive=d0",
        "-kernel", kernel, "-append", cmdline,
    ]


# --- the benchmark ----------------------------------------------------------------------------

def make_image(path, mib):
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    with open(path, "rb") as f:  # into the page cache
        while f.read(16 * MiB):
            pass


def drop_cache(path):
    """Evict ``path``'s pages from the host page cache (POSIX_FADV_DONTNEED)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def rate(name, bs, count, seconds):
    if bs >= MiB:
        return count * bs / MiB / seconds, "MiB/s"
    return count / seconds / 1000, "kIOPS"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-mib", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="fewer I/Os per run")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--xvm-child", nargs=3, metavar=("KERNEL", "IMAGE", "CMDLINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.xvm_child:
        xvm_child(*args.xvm_child)
        return 0
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 not installed (Debian: qemu-system-x86)", file=sys.stderr)
        return 1

    kernel = guest("blk")
    workloads = [w for w in WORKLOADS if not args.only or args.only in w[0]]
    results = {(w[0], vmm): [] for w in workloads for vmm in ("xvm", "qemu")}
    with tempfile.TemporaryDirectory(prefix="bench-blk-", dir="/var/tmp") as tmp:
        image = os.path.join(tmp, "disk.img")
        make_image(image, args.image_mib)
        print(f"image {args.image_mib} MiB in {tmp}; load average {os.getloadavg()[0]:.1f}; "
              f"{args.rounds} rounds", flush=True)
        for r in range(args.rounds):
            for name, op, bs, depth, count, quick in workloads:
                n = quick if args.quick else count
                cmdline = f"mode=bench op={op} bs={bs} count={n} depth={depth}"
                order = ("xvm", "qemu") if r % 2 == 0 else ("qemu", "xvm")
                for vmm in order:
                    argv = (xvm_argv if vmm == "xvm" else qemu_argv)(kernel, image, cmdline)
                    if name.endswith(" cold"):
                        drop_cache(image)
                    res = run_vmm(vmm, argv, n)
                    res["rate"], unit = rate(name, bs, n, res["guest_s"])
                    results[(name, vmm)].append(res)
                    print(f"  round {r + 1} {name:20} {vmm:4}: {res['rate']:8.2f} {unit:5} "
                          f"guest {res['guest_s']:.3f} s host {res['host_s']:.3f} s, CPU/IO "
                          f"{res['cpu_us_per_io']:7.1f} us (without vCPU thread "
                          f"{res['cpu_us_per_io_no_vcpu']:6.1f} us)", flush=True)

    def med(name, vmm, key):
        return statistics.median(r[key] for r in results[(name, vmm)])

    print(f"\nmedians over {args.rounds} rounds (load average now {os.getloadavg()[0]:.1f}):")
    print(f"{'workload':20} {'xvm':>10} {'qemu':>10} {'xvm/qemu':>8}   "
          f"{'CPU us/IO xvm':>13} {'qemu':>7} {'ratio':>6}   {'w/o vCPU xvm':>12} {'qemu':>7} {'ratio':>6}")
    for name, op, bs, depth, count, quick in workloads:
        unit = "MiB/s" if bs >= MiB else "kIOPS"
        x, q = med(name, "xvm", "rate"), med(name, "qemu", "rate")
        cx, cq = med(name, "xvm", "cpu_us_per_io"), med(name, "qemu", "cpu_us_per_io")
        nx, nq = med(name, "xvm", "cpu_us_per_io_no_vcpu"), med(name, "qemu", "cpu_us_per_io_no_vcpu")
        print(f"{name:20} {x:10.2f} {q:10.2f} {x / q:8.2f}   {cx:13.1f} {cq:7.1f} {cx / cq:6.2f}   "
              f"{nx:12.1f} {nq:7.1f} {nx / nq if nq else float('nan'):6.2f}   ({unit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Per-exit costs of this host's /dev/kvm, measured with cvmm and the pio_bench guest.

    python3 benchmarks/cvmm/bench.py [--repeat 5] [--count 20000] [--qemu] [op ...]

For each operation prints the VMM-side wall time per operation (between the
guest's "bench start" and "bench done" lines) and the guest's own TSC-based
figure, min and median over the repeats, and the CPU time of cvmm's vCPU thread
per operation (guest + KVM + VMM; CLOCK_THREAD_CPUTIME_ID), which hardly moves
with host load while wall times do. The machine is shared: quote the CPU figure
and the wall-time min.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


OPS = {
    "pio_out_userspace": "port=0x3ff",
    "pio_out_port80": "port=0x80",
    "pio_out_inkernel_pic": "port=0x21",
    "pio_in_inkernel_pic": "op=in port=0x21",
    "mmio_write_userspace": "op=mmio",
    "mmio_read_userspace": "op=mmio_read",
    "lapic_read_inkernel": "op=lapic",
    "cpuid": "op=cpuid",
    "rdmsr": "op=rdmsr",
}


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def guest_image() -> pathlib.Path:
    return _load("guest_build", HERE.parent.parent / "tests" / "guests" / "build.py").build("pio_bench")


def cvmm_binary() -> pathlib.Path:
    return _load("cvmm_build", HERE / "build.py").build()


def run_once(cvmm: pathlib.Path, image: pathlib.Path, args: str, count: int) -> tuple[float, float, float]:
    proc = subprocess.run([str(cvmm), str(image), f"count={count} {args}"], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    m = re.search(r"bench \d+ PIO exits in ([\d.]+) ms", out)
    g = re.search(r"bench guest_ns_per_op (\d+)", out)
    c = re.search(r"bench vcpu thread cpu time [\d.]+ ms: (\d+) ns per operation", out)
    if proc.returncode != 0 or not m or not g or not c:
        raise RuntimeError(f"cvmm failed ({proc.returncode}):\n{out}")
    return float(m.group(1)) * 1e6 / count, float(g.group(1)), float(c.group(1))


def run_qemu(image: pathlib.Path, args: str, count: int) -> float:
    """The guest's own TSC-based ns/op under qemu -accel kvm -M microvm (the reference peer)."""
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-m", "128", "-display", "none",
            "-nodefaults", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", str(image), "-append", f"count={count} {args}"]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    g = re.search(r"bench guest_ns_per_op (\d+)", proc.stdout)
    if not g:
        raise RuntimeError(f"qemu failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return float(g.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--qemu", action="store_true", help="also run the guest under qemu -accel kvm -M microvm")
    ap.add_argument("ops", nargs="*", default=list(OPS))
    opts = ap.parse_args()
    cvmm, image = cvmm_binary(), guest_image()
    header = (f"{'operation':24} {'cvmm wall ns/op min':>19} {'median':>8} {'guest ns/op min':>16}"
              f" {'vcpu cpu ns/op median':>22}")
    print(header + (f" {'qemu guest ns/op min':>21}" if opts.qemu else ""))
    for op in opts.ops:
        vmm, guest, cpu, qemu = [], [], [], []
        for _ in range(opts.repeat):  # interleaved, so both see the same host load
            v, g, c = run_once(cvmm, image, OPS[op], opts.count)
            vmm.append(v)
            guest.append(g)
            cpu.append(c)
            if opts.qemu:
                qemu.append(run_qemu(image, OPS[op], opts.count))
        line = (f"{op:24} {min(vmm):19.0f} {statistics.median(vmm):8.0f} {min(guest):16.0f}"
                f" {statistics.median(cpu):22.0f}")
        print(line + (f" {min(qemu):21.0f}" if opts.qemu else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Boot-to-init of an unmodified Debian cloud kernel: xvm vs QEMU, same kernel, same initramfs.

    python3 benchmarks/bench_boot.py [--rounds N]

Unmodified kernels need hardware-assisted KVM. On a PVM host this script
re-runs itself inside the HVM test host (QEMU-TCG with emulated AMD-V), where
xvm and `qemu-system-x86_64 -accel kvm` (`-M microvm` and the default `-M pc`)
boot the same bzImage + initramfs in turn. The init prints a marker and powers
off; the figure is wall time from launch to the marker, and to power-off.
Absolute times inside TCG mean little: the ratio is the result.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import summary  # noqa: E402
from xvm.testhost import NESTED_MARKER, TestHost, cloud_kernel, hardware_virtualization, nested_initramfs  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
# TCG does not carry XSETBV through to nested guests faithfully (ENVIRONMENT.md): hide XSAVE from both VMMs.
NESTED_TCG = bool(os.environ.get("XVM_TESTHOST_INNER"))


def boot_xvm(host, kernel, initrd):
    cfg = xvm.DomainConfig(
        name="bench", memory_mib=256, kernel=kernel, initrd=initrd, cmdline=CMDLINE,
        disable_cpu_features=("xsave",) if NESTED_TCG else (),
    )
    dom = host.define(cfg)
    try:
        t0 = time.perf_counter()
        dom.start()
        dom.console.expect(NESTED_MARKER, timeout=300)
        to_init = time.perf_counter() - t0
        dom.wait(timeout=120)
        return to_init, time.perf_counter() - t0
    finally:
        if dom.state is not xvm.DomainState.SHUTOFF:
            dom.destroy()
        dom.undefine()


def boot_qemu(machine, kernel, initrd):
    cpu = "host,-xsave" if NESTED_TCG else "host"
    cmd = [
        "qemu-system-x86_64", "-accel", "kvm", "-M", machine, "-cpu", cpu, "-m", "256M", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    to_init = None
    for line in proc.stdout:
        if to_init is None and NESTED_MARKER.encode() in line:
            to_init = time.perf_counter() - t0
    proc.wait(timeout=120)
    if to_init is None:
        raise RuntimeError(f"qemu -M {machine} did not reach init (exit {proc.returncode})")
    return to_init, time.perf_counter() - t0


def run_here(rounds):
    kernel = cloud_kernel(vmlinux=False).bzimage
    initrd = nested_initramfs()
    results = {"xvm": [], "qemu -M microvm": [], "qemu -M pc": []}
    with xvm.connect() as host:
        for _ in range(rounds):
            results["xvm"].append(boot_xvm(host, kernel, initrd))
            results["qemu -M microvm"].append(boot_qemu("microvm", kernel, initrd))
            results["qemu -M pc"].append(boot_qemu("pc", kernel, initrd))
    print(f"kernel {kernel.name}, {rounds} round(s), {'nested under TCG' if NESTED_TCG else 'hardware KVM'}")
    for name, runs in results.items():
        print(f"{name:16s} to init: {summary([r[0] for r in runs], 's')}; to power-off: {summary([r[1] for r in runs], 's')}")
    for peer in ("qemu -M microvm", "qemu -M pc"):
        ratios = [a[0] / b[0] for a, b in zip(results["xvm"], results[peer])]
        print(f"ratio xvm / {peer} (boot to init): {summary(ratios, 'x')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if hardware_virtualization():
        run_here(args.rounds)
        return 0
    result = TestHost(stream=sys.stdout).run(
        [sys.executable, os.path.abspath(__file__), "--rounds", str(args.rounds)], timeout=600 + 300 * args.rounds
    )
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""fio inside an unmodified Linux guest: xvm's virtio-blk against QEMU's, same guest, same image.

    python3 benchmarks/bench_fio.py [--seconds S] [--rounds N]

A Debian cloud kernel boots with fio (Debian's, with its libraries) in its initramfs and runs
the same fio jobs on its virtio-blk disk /dev/vda (a raw image; direct=1, libaio):
4 KiB random reads and writes at queue depth 1 and 32, 1 MiB sequential reads and writes at
depth 4.  It prints one terse line per job: IOPS, MB/s and p50/p99 completion latency are
read from it.  Host CPU per I/O: the VMM process's CPU time (all its threads, from
/proc/<pid>/stat) between the guest's lines before and after each job, divided by the job's
I/Os (IOPS times runtime and ramp: fio's own start-up is in the CPU time, alike for both).
xvm (virtio-mmio, in a VMM process of its own as users run it) and
`qemu-system-x86_64 -accel kvm -M microvm` with `virtio-blk-device` (virtio-mmio too; its
default cache, the host page cache, as xvm's) run the same guest in turn, alternating which
goes first.  Unmodified kernels need hardware-assisted KVM, so on a PVM host the script
re-runs itself inside the HVM test host (QEMU-TCG, emulated AMD-V): absolute figures there
mean little, the xvm/QEMU ratio of each row is the result.  Prints; asserts nothing.

The initramfs (~36 MB compressed: fio links many libraries) is built before the test host
starts, where reading files is fast, and unpacked inside into the test host's memory, as is
the disk image, so neither VMM reads its guest's files over the test host's 9p share.
"""
import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import add_program  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
NESTED_TCG = bool(os.environ.get("XVM_TESTHOST_INNER"))
GUEST_MODULES = ("virtio_mmio", "virtio_blk")
IMAGE_MIB = 128
MEMORY_MIB = 512
# name, fio arguments
JOBS = (
    ("randread 4k qd1", "--rw=randread --bs=4k --iodepth=1"),
    ("randread 4k qd32", "--rw=randread --bs=4k --iodepth=32"),
    ("randwrite 4k qd1", "--rw=randwrite --bs=4k --iodepth=1"),
    ("randwrite 4k qd32", "--rw=randwrite --bs=4k --iodepth=32"),
    ("read 1M qd4", "--rw=read --bs=1M --iodepth=4"),
    ("write 1M qd4", "--rw=write --bs=1M --iodepth=4"),
)
FIGURES = (("IOPS", "k"), ("MB/s", ""), ("p50", "us"), ("p99", "us"),
           ("CPU/IO", "us"))  # name, unit
RAMP_S = 1


# --- the guest ---------------------------------------------------------------------------------

def build_initramfs(path, seconds):
    """Write the guest's initramfs (gzip-compressed newc cpio) to ``path``."""
    from xvm.testhost import cache
    from xvm.testhost.initramfs import CpioWriter, busybox_base, resolve_modules

    fio = shutil.which("fio")
    if fio is None:
        raise SystemExit("bench_fio: fio is not installed (scripts/setup.sh installs it)")
    w = CpioWriter()
    busybox_base(w)
    add_program(w, fio)
    modules = resolve_modules(cache.kernel_package("cloud").modules, GUEST_MODULES)
    for name, data in modules:
        w.file(f"lib/modules/{name}.ko", data)
    common = f"--filename=/dev/vda --direct=1 --ioengine=libaio --runtime={seconds} --time_based " \
             f"--ramp_time={RAMP_S} --output-format=terse --terse-version=3"
    runs = "\n".join(f'echo "XVM-FIO-BEGIN {i}"\n'
                     f'echo "XVM-FIO {i} $(fio --name=j{i} {common} {args} 2>&1 | tail -1)"'
                     for i, (_, args) in enumerate(JOBS))
    init = f"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in {' '.join(n for n, _ in modules)}; do insmod /lib/modules/$m.ko; done
for i in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done
echo XVM-FIO-UP
{runs}
echo XVM-FIO-DONE
poweroff -f
"""
    w.file("init", init.encode(), 0o755)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(w.getvalue())


def process_cpu(pid):
    """CPU time in seconds of process ``pid``, all its threads (utime + stime), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuPerJob:
    """Fed the guest's console as it comes: the VMM process's CPU time at each job's
    "XVM-FIO-BEGIN i" and "XVM-FIO i" lines; ``seconds[i]`` is job i's."""

    def __init__(self, pid):
        self.pid = pid
        self.seconds = {}
        self._begin = {}
        self._partial = b""

    def feed(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            m = re.search(rb"XVM-FIO(-BEGIN)? (\d+)", line)
            if not m:
                continue
            now, job = process_cpu(self.pid), int(m.group(2))
            if m.group(1):
                self._begin[job] = now
            elif now is not None and self._begin.get(job) is not None:
                self.seconds[job] = now - self._begin[job]


def parse(text, cpu=None, seconds=None):
    """{job name: {figure: value}} from the guest's XVM-FIO lines (fio's terse format v3:
    read IOPS at field 8, write IOPS at 49, bandwidth in KiB/s before each, then each
    direction's completion latency percentiles as "50.000000%=N" in microseconds); with
    ``cpu`` (a :class:`CpuPerJob`) and the jobs' ``seconds``, host CPU per I/O too."""
    out = {}
    for m in re.finditer(r"XVM-FIO (\d+) (3;\S+)", text):
        name = JOBS[int(m.group(1))][0]
        f = m.group(2).split(";")
        if len(f) < 80 or f[4] != "0":  # fio reported an error
            continue
        write = "write" in name
        bw, iops = (float(f[47]), float(f[48])) if write else (float(f[6]), float(f[7]))
        section = f[58:78] if write else f[17:37]
        pct = dict(p.split("%=") for p in section if "%=" in p)
        out[name] = {"IOPS": iops / 1000, "MB/s": bw * 1024 / 1e6,
                     "p50": float(pct.get("50.000000", "nan")), "p99": float(pct.get("99.000000", "nan"))}
        job = int(m.group(1))
        if cpu is not None and job in cpu.seconds and iops:
            out[name]["CPU/IO"] = cpu.seconds[job] / (iops * (seconds + RAMP_S)) * 1e6
    return out


# --- the two VMMs ------------------------------------------------------------------------------

def run_xvm(host, kernel, initrd, image, timeout):
    import xvm

    dom = host.define(xvm.DomainConfig(
        name="bench-fio", memory_mib=MEMORY_MIB, kernel=kernel, initrd=initrd, cmdline=CMDLINE,
        disable_cpu_features=("xsave",) if NESTED_TCG else (), disks=[xvm.Disk(image)]))
    try:
        dom.start()
        cpu = CpuPerJob(dom.info()["pid"])
        unsubscribe = dom.console.subscribe(lambda event, data: event == "data" and cpu.feed(data))
        try:
            dom.console.expect("XVM-FIO-DONE", timeout=timeout)
        finally:
            unsubscribe()
        return dom.console.text(), cpu
    finally:
        try:
            if dom.state is not xvm.DomainState.SHUTOFF:
                dom.destroy()
        except xvm.errors.StateError:
            pass  # the guest powered off (its last step) between the two calls
        dom.undefine()


def run_qemu(kernel, initrd, image, timeout):
    cpu = "host,-xsave" if NESTED_TCG else "host"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-cpu", cpu, "-m", f"{MEMORY_MIB}M",
           "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE,
           "-drive", f"file={image},if=none,id=d0,format=raw",
           "-device", "virtio-blk-device,drive=d0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    cpu = CpuPerJob(proc.pid)

    def read():
        for line in proc.stdout:
            lines.append(line)
            cpu.feed(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    return b"".join(lines).decode(errors="replace"), cpu


def run_here(compressed, seconds, rounds):
    import xvm
    from xvm.testhost import cloud_kernel

    kernel = cloud_kernel(vmlinux=False).bzimage
    work = tempfile.mkdtemp(prefix="xvm-bench-fio-")  # the test host's memory, not its 9p share
    timeout = 300 + 10 * (seconds + 2) * len(JOBS)
    results = {"xvm": [], "qemu": []}
    try:
        initrd = os.path.join(work, "initrd.cpio")
        with gzip.open(compressed, "rb") as src, open(initrd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        image = os.path.join(work, "disk.img")
        with open(image, "wb") as f:
            for _ in range(IMAGE_MIB):
                f.write(os.urandom(1 << 20))
        with xvm.connect(state_dir=os.path.join(work, "state")) as host:
            for r in range(rounds):
                order = ("xvm", "qemu") if r % 2 == 0 else ("qemu", "xvm")
                for vmm in order:
                    t = time.monotonic()
                    try:
                        text, cpu = run_xvm(host, kernel, initrd, image, timeout) if vmm == "xvm" \
                            else run_qemu(kernel, initrd, image, timeout)
                    except Exception:
                        _print_logs(os.path.join(work, "state"))
                        raise
                    parsed = parse(text, cpu, seconds)
                    results[vmm].append(parsed)
                    print(f"{vmm:5s}: {len(parsed)}/{len(JOBS)} jobs in {time.monotonic() - t:.0f} s: "
                          + "; ".join(f"{k} {v['IOPS']:.2f} kIOPS" for k, v in parsed.items()), flush=True)
                    if len(parsed) < len(JOBS):
                        print(text[-3000:], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, seconds, rounds)


def _print_logs(state_dir):
    """The end of every log under ``state_dir`` (the VMM's: why it ended)."""
    for root, _, files in os.walk(state_dir):
        for name in files:
            if name.endswith(".log"):
                with open(os.path.join(root, name), errors="replace") as f:
                    print(f"--- {name}:\n{f.read()[-4000:]}", flush=True)


def report(results, seconds, rounds):
    """One row per job and figure: the medians, and the median of each round's xvm/QEMU ratio
    (for latencies and CPU per I/O lower is better: a ratio below 1 is xvm's win)."""
    import statistics

    where = "nested under TCG" if NESTED_TCG else "hardware KVM"
    print(f"\nfio in a Linux guest on virtio-blk (/dev/vda, direct, libaio), {seconds} s per job, "
          f"{rounds} round(s), {where}")
    print(f"{'job':18s} {'figure':8s} {'xvm':>10s} {'qemu':>10s}  xvm/qemu (min-max)")
    for name, _ in JOBS:
        for figure, unit in FIGURES:
            medians = []
            for vmm in ("xvm", "qemu"):
                values = [r[name][figure] for r in results[vmm] if figure in r.get(name, {})]
                medians.append(f"{statistics.median(values):.1f}" if values else "n/a")
            ratios = sorted(a[name][figure] / b[name][figure] for a, b in zip(results["xvm"], results["qemu"])
                            if figure in a.get(name, {}) and b.get(name, {}).get(figure))
            ratio = (f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else "n/a")
            print(f"{name:18s} {(figure + ' ' + unit).strip():8s} "
                  f"{medians[0]:>10s} {medians[1]:>10s}  {ratio}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--initramfs", help=argparse.SUPPRESS)  # the compressed one, built outside
    args = ap.parse_args()
    from xvm.testhost import TestHost, hardware_virtualization

    own = args.initramfs is None
    path = args.initramfs
    if own:
        fd, path = tempfile.mkstemp(prefix="xvm-bench-fio-", suffix=".cpio.gz", dir="/var/tmp")
        os.close(fd)
        build_initramfs(path, args.seconds)
    try:
        if hardware_virtualization():
            run_here(path, args.seconds, args.rounds)
            return 0
        result = TestHost(stream=sys.stdout).run(
            [sys.executable, os.path.abspath(__file__), "--seconds", str(args.seconds),
             "--rounds", str(args.rounds), "--initramfs", path],
            timeout=900 + 900 * args.rounds)
        return result.exit_status
    finally:
        if own:
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())

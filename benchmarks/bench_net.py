#!/usr/bin/env python3
"""Network throughput and packet rate: xvm's virtio-net against QEMU's, same guest, same TAP path.

    python3 benchmarks/bench_net.py [--seconds S] [--rounds N] [--queues Q] [--native]

An unmodified Debian cloud kernel with iperf3 in its initramfs runs as a guest whose NIC is a
TAP on a bridge; iperf3's server runs on the host side of that bridge (the host network
namespace, on the bridge's address).  The guest measures TCP guest->host, TCP host->guest
(-R), both again with 4 parallel streams (-P 4), UDP with 64-byte datagrams (packets per
second) and UDP with 1400-byte datagrams.  --queues Q (default 1) gives the guest Q vCPUs and a
Q-pair multiqueue NIC under both VMMs (xvm ``Nic(queues=Q)``; QEMU ``-netdev tap,queues=Q`` and
``virtio-net-device,mq=on``): Linux's driver enables one pair per vCPU.  xvm
(virtio-mmio, Python data plane) and `qemu-system-x86_64 -accel kvm -M microvm` with
`virtio-net-device` on a TAP (virtio-mmio too, vhost off: there is no vhost-net here) run the
same guest in turn.  Unmodified kernels need hardware-assisted KVM, so on a PVM host the
script re-runs itself inside the HVM test host (QEMU-TCG, emulated AMD-V): absolute figures
there mean little, the xvm/QEMU ratio is the result.  Each row also gives the host CPU per MB (or
per packet) of the VMM's process, its vCPU threads included, between the guest's result lines.

--native measures instead, on this (PVM) host, the native-speed test guest tests/guests/net.c:
frames per second it transmits to a raw socket on the bridge, and guest<->guest round trips.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xvm  # noqa: E402
from benchmarks._common import add_program, summary  # noqa: E402
from xvm.net import bridge as _bridge  # noqa: E402
from xvm.testhost import TestHost, hardware_virtualization  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
NESTED_TCG = bool(os.environ.get("XVM_TESTHOST_INNER"))
SUBNET = "10.219.0"
HOST_IP = f"{SUBNET}.1"
GUEST_MODULES = ("virtio_mmio", "virtio_net")
HOST_MODULES = ("tun", "bridge")
TESTS = (  # name, iperf3 client arguments, unit
    ("tcp_tx", "", "Mbit/s"),
    ("tcp_rx", "-R", "Mbit/s"),
    ("tcp_tx_4", "-P 4", "Mbit/s"),      # 4 streams: iperf3's [SUM] receiver line
    ("tcp_rx_4", "-R -P 4", "Mbit/s"),
    ("udp64_pps", "-u -b 0 -l 64", "kpps"),
    ("udp1400", "-u -b 0 -l 1400", "Mbit/s"),
)


# --- the guest -------------------------------------------------------------------------------

def bench_initramfs(seconds):
    from xvm.testhost import cache
    from xvm.testhost.initramfs import CpioWriter, busybox_base, resolve_modules
    package = cache.kernel_package("cloud")
    w = CpioWriter()
    busybox_base(w)
    add_program(w, shutil.which("iperf3"))
    modules = resolve_modules(package.modules, GUEST_MODULES)
    for name, data in modules:
        w.file(f"lib/modules/{name}.ko", data)
    runs = "\n".join(
        f'echo "XVM-BENCH {name} $(iperf3 -c {HOST_IP} {args} -t {seconds} -f m 2>&1 '
        f'| grep -E "receiver|error" | tail -1)"' for name, args, _ in TESTS)
    init = f"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in {' '.join(n for n, _ in modules)}; do insmod /lib/modules/$m.ko; done
ip link set lo up; ip link set eth0 up; ip addr add {SUBNET}.2/24 dev eth0
for i in $(seq 1 60); do ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1 && break; done
echo XVM-BENCH-UP
{runs}
echo XVM-BENCH-DONE
poweroff -f
"""
    w.file("init", init.encode(), 0o755)
    fd, path = tempfile.mkstemp(prefix="xvm-bench-net-", suffix=".cpio")
    with os.fdopen(fd, "wb") as f:
        f.write(w.getvalue())
    return path


def parse(text):
    """{test: value} from the guest's XVM-BENCH lines."""
    out = {}
    for name, _, unit in TESTS:
        m = re.search(rf"XVM-BENCH {name} (.*)", text)
        if not m:
            continue
        line = m.group(1)
        if unit == "kpps":
            d = re.search(r"(\d+)/(\d+) \(", line)
            t = re.search(r"([\d.]+)-([\d.]+)\s+sec", line)
            if d and t:
                lost, total = int(d.group(1)), int(d.group(2))
                out[name] = (total - lost) / (float(t.group(2)) - float(t.group(1))) / 1000
        else:
            r = re.search(r"([\d.]+) Mbits/sec", line)
            if r:
                out[name] = float(r.group(1))
    return out


def process_cpu_seconds(pid):
    """User + system CPU time of process ``pid``, all its threads (the guest's vCPUs among them)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMarks:
    """The VMM process's CPU time each time the guest prints an XVM-BENCH line: a test's
    CPU is what its process used between the line before and its own."""

    def __init__(self, pid):
        self.pid, self.marks, self._partial = pid, [], b""

    def feed(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            m = re.search(rb"XVM-BENCH[ -](\w+)", line)
            if m:
                self.marks.append((m.group(1).decode(), process_cpu_seconds(self.pid)))

    def per_test(self):
        """{test: CPU seconds} from the marks (XVM-BENCH-UP starts the first)."""
        out = {}
        for (_, before), (name, after) in zip(self.marks, self.marks[1:]):
            out[name] = after - before
        return out


def cpu_per_unit(values, cpu, seconds):
    """{test: host CPU µs per MB (throughput rows) or per packet (kpps rows)}."""
    out = {}
    for name, _, unit in TESTS:
        if name in values and name in cpu and values[name] > 0:
            amount = values[name] * seconds * (1000 if unit == "kpps" else 1 / 8)  # packets or MB
            out[name] = cpu[name] * 1e6 / amount
    return out


# --- the two VMMs ----------------------------------------------------------------------------

def run_xvm(host, net, kernel, initrd, timeout, queues=1):
    dom = host.define(xvm.DomainConfig(
        name="bench-net", memory_mib=512, vcpus=queues, kernel=kernel, initrd=initrd, cmdline=CMDLINE,
        disable_cpu_features=("xsave",) if NESTED_TCG else (),
        nics=[xvm.Nic(network=net.name, mac="52:54:00:be:0c:02", queues=queues)]))
    marks = CpuMarks(os.getpid())  # in_process: the VMM is this process
    try:
        dom.start()
        unsubscribe = dom.console.subscribe(lambda event, data: event == "data" and marks.feed(data))
        try:
            dom.console.expect("XVM-BENCH-DONE", timeout=timeout)
        finally:
            unsubscribe()
        nic = dom.machine.virtio[0].device
        metrics = nic.metrics.snapshot()
        return dom.console.text(), metrics, marks.per_test()
    finally:
        if dom.state is not xvm.DomainState.SHUTOFF:
            dom.destroy()
        dom.undefine()


def run_qemu(net, kernel, initrd, timeout, queues=1):
    tap = "xvmqtap0"
    cpu = "host,-xsave" if NESTED_TCG else "host"
    mq = f",queues={queues}" if queues > 1 else ""
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-cpu", cpu, "-m", "512M",
           "-smp", str(queues), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE,
           "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off{mq}",
           "-device", "virtio-net-device,netdev=n0,mac=52:54:00:be:0c:02" + (",mq=on" if queues > 1 else "")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, marks = [], CpuMarks(proc.pid)

    def read():
        for line in proc.stdout:
            lines.append(line)
            try:
                marks.feed(line)
            except OSError:  # QEMU already gone
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while _bridge.link_index(tap) is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("QEMU did not create its TAP: "
                                   + b"".join(lines).decode(errors="replace")[-2000:])
            time.sleep(0.05)
        _bridge.attach(tap, net.bridge)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    return b"".join(lines).decode(errors="replace"), marks.per_test()


def run_here(seconds, rounds, queues=1):
    from xvm.testhost import cloud_kernel
    from xvm.testhost.initramfs import load_testhost_modules
    load_testhost_modules(HOST_MODULES)
    kernel = cloud_kernel(vmlinux=False).bzimage
    initrd = bench_initramfs(seconds)
    timeout = 300 + 12 * seconds * len(TESTS)
    server = None
    results = {"xvm": [], "qemu": []}
    cpu = {"xvm": [], "qemu": []}  # per round: {test: host CPU µs per MB or per packet}
    try:
        with xvm.connect(in_process=True) as host:  # reads vCPU and device internals
            net = host.create_network(xvm.Network("bench", address=f"{HOST_IP}/24"))
            try:
                server = subprocess.Popen(["iperf3", "-s", "-B", HOST_IP],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(rounds):
                    text, metrics, used = run_xvm(host, net, kernel, initrd, timeout, queues)
                    results["xvm"].append(parse(text))
                    cpu["xvm"].append(cpu_per_unit(results["xvm"][-1], used, seconds))
                    print("xvm  :", _lines(text), "| metrics:",
                          {k: v for k, v in metrics.items() if v}, flush=True)
                    text, used = run_qemu(net, kernel, initrd, timeout, queues)
                    results["qemu"].append(parse(text))
                    cpu["qemu"].append(cpu_per_unit(results["qemu"][-1], used, seconds))
                    print("qemu :", _lines(text), flush=True)
            finally:
                net.destroy()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        os.unlink(initrd)
    where = "nested under TCG" if NESTED_TCG else "hardware KVM"
    print(f"\nvirtio-net guest <-> host over a TAP + bridge, iperf3 {seconds} s per test, "
          f"{rounds} round(s), {queues} queue pair(s) and vCPU(s), {where}")
    for name, _, unit in TESTS:
        row = []
        for vmm in ("xvm", "qemu"):
            values = [r[name] for r in results[vmm] if name in r]
            row.append(summary(values, unit) if values else "n/a")
        ratios = [a[name] / b[name] for a, b in zip(results["xvm"], results["qemu"])
                  if name in a and name in b and b[name]]
        ratio = summary(ratios, "x") if ratios else "n/a"
        print(f"{name:10s} xvm: {row[0]}\n{'':10s} qemu: {row[1]}\n{'':10s} xvm/qemu: {ratio}")
        per = "µs/packet" if unit == "kpps" else "µs/MB"
        costs = [a[name] / b[name] for a, b in zip(cpu["xvm"], cpu["qemu"]) if name in a and name in b]
        for vmm in ("xvm", "qemu"):
            values = [c[name] for c in cpu[vmm] if name in c]
            print(f"{'':10s} host CPU {vmm}: {summary(values, per) if values else 'n/a'}")
        print(f"{'':10s} host CPU xvm/qemu: {summary(costs, 'x') if costs else 'n/a'}")


def _lines(text):
    return " ; ".join(m.group(0) for m in re.finditer(r"XVM-BENCH \w+ .*", text))


# --- native-speed test guest on this host ------------------------------------------------------

def run_native(rounds):
    import socket
    from benchmarks._common import guest
    kernel = guest("net")
    with xvm.connect(in_process=True) as host:  # reads vCPU and device internals
        net = host.create_network(xvm.Network("benchnat"))
        try:
            for _ in range(rounds):
                pong = host.create(xvm.DomainConfig(name="pong", memory_mib=64, kernel=kernel,
                                   cmdline="id=1 pingpong=1", nics=[xvm.Nic(network=net.name)]))
                ping = host.create(xvm.DomainConfig(name="ping", memory_mib=64, kernel=kernel,
                                   cmdline="id=0 pingpong=500", nics=[xvm.Nic(network=net.name)]))
                ping.wait(timeout=120)
                pong.wait(timeout=30)
                m = re.search(r"rtt_us=(\d+)", ping.console.text())
                print(f"native guest<->guest frame round trip: {m.group(1) if m else '?'} us")
                ping.undefine()
                pong.undefine()
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
                sock.bind((net.bridge, 0))
                sock.settimeout(0.5)
                count = 20000
                dom = host.create(xvm.DomainConfig(
                    name="flood", memory_mib=64, kernel=kernel,
                    cmdline=f"id=9 count={count} ms=0 flood=1", nics=[xvm.Nic(network=net.name)]))
                got, first, last = 0, None, None
                try:
                    while True:
                        sock.recv(2048)
                        last = time.perf_counter()
                        first = first or last
                        got += 1
                except socket.timeout:
                    pass
                sock.close()
                dom.wait(timeout=60)
                dom.undefine()
                if got > 1:
                    print(f"native guest->host frames: {got}/{count} received, "
                          f"{(got - 1) / (last - first) / 1000:.1f} kpps")
        finally:
            net.destroy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--queues", type=int, default=1, help="NIC queue pairs and guest vCPUs")
    ap.add_argument("--native", action="store_true")
    args = ap.parse_args()
    if args.native:
        run_native(args.rounds)
        return 0
    if hardware_virtualization():
        run_here(args.seconds, args.rounds, args.queues)
        return 0
    result = TestHost(stream=sys.stdout).run(
        [sys.executable, os.path.abspath(__file__), "--seconds", str(args.seconds),
         "--rounds", str(args.rounds), "--queues", str(args.queues)],
        timeout=900 + 600 * args.rounds)
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())

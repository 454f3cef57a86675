"""Live migration on loopback: xvm (two embedded hosts, TLS 1.3 VMM to VMM, and plain TCP)
beside QEMU (``-accel kvm -M microvm``, ``-incoming tcp:`` + QMP ``migrate``, plain TCP) for
the same guest and the same downtime limit, in one run.

Workloads: "idle" is the busy test guest (a counter: a handful of pages dirtied); "dirty" is
the dirty test guest rewriting a 64 MiB working set at full speed (auto-converge on in both).
Printed per case: downtime, total time, bytes on the wire ÷ guest memory, and whether the
guest goes on on the destination (QEMU does not migrate PVM's paravirtual MSRs, so on a PVM
host its destination guest may not).

    PYTHONPATH=$PWD python3 benchmarks/bench_migrate.py [--sizes 256,1024] [--downtime 300]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import guest  # noqa: E402

import xvm  # noqa: E402
from xvm.host.local import LocalHost  # noqa: E402
from xvm.migration.tls import make_test_ca  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
WORKLOADS = {"idle": ("busy", "shift=30", "count"), "dirty": ("dirty", "mib=64 shift=4", "dirty: pass")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- xvm ----------------------------------------------------------------------------------------

def run_xvm(work, size_mib, workload, downtime_ms, tls):
    kernel, cmdline, ready = WORKLOADS[workload]
    tls_dir = os.path.join(work, "tls")
    hosts = [LocalHost(os.path.join(work, f"xvm-{n}-{time.monotonic_ns()}")) for n in "ab"]
    listener = hosts[1].listen_migrations("127.0.0.1:0", tls_dir=tls_dir, insecure=not tls)
    try:
        dom = hosts[0].create(xvm.DomainConfig(name="m", kernel=guest(kernel), cmdline=cmdline,
                                               memory_mib=size_mib))
        dom.console.expect(ready, 30)
        time.sleep(0.5)
        stats = dom.migrate(listener.uri, tls_dir=tls_dir, insecure=not tls, downtime_ms=downtime_ms,
                            timeout_s=120)
        moved = hosts[1].lookup("m")
        moved.console.expect(ready, 30)
        if "FAIL" in moved.console.log().decode(errors="replace"):
            raise SystemExit("xvm: the guest found a stale page after the migration")
        moved.destroy()
        return {"downtime_ms": stats.downtime_ms, "total_ms": stats.total_ms, "bytes": stats.bytes_sent,
                "iterations": stats.iterations, "throttle": stats.throttle_pct, "continues": True}
    finally:
        for h in hosts:
            for d in h.domains():
                try:
                    d.destroy()
                except xvm.XvmError:
                    pass
            h.close()


# --- QEMU ---------------------------------------------------------------------------------------

class Qmp:
    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self):
        while True:
            message = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def call(self, command, **arguments):
        self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply["return"]

    def close(self):
        self.sock.close()


def qemu(work, tag, size_mib, kernel, cmdline, extra=()):
    log = os.path.join(work, f"{tag}.log")
    qmp = os.path.join(work, f"{tag}.qmp")
    argv = [QEMU, "-accel", "kvm", "-M", "microvm", "-m", str(size_mib), "-smp", "1",
            "-kernel", kernel, "-append", cmdline, "-display", "none", "-monitor", "none",
            "-serial", f"file:{log}", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, log, qmp


def wait_log(path, text, timeout=60, after=0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                data = f.read()
            if text.encode() in data[after:]:
                return data
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"QEMU: no {text!r} in {path}")


def run_qemu(work, size_mib, workload, downtime_ms):
    kernel, cmdline, ready = WORKLOADS[workload]
    kernel = guest(kernel)
    port = free_port()
    src, src_log, src_qmp = qemu(work, f"src{size_mib}{workload}", size_mib, kernel, cmdline)
    dst, dst_log, dst_qmp = qemu(work, f"dst{size_mib}{workload}", size_mib, kernel, cmdline,
                                 ["-incoming", f"tcp:127.0.0.1:{port}"])
    try:
        wait_log(src_log, ready)
        time.sleep(0.5)
        q = Qmp(src_qmp)
        q.call("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
        q.call("migrate-set-parameters", **{"downtime-limit": int(downtime_ms), "max-bandwidth": 100 << 30})
        Qmp(dst_qmp).close()
        q.call("migrate", uri=f"tcp:127.0.0.1:{port}")
        while True:
            info = q.call("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.01)
        if info["status"] != "completed":
            raise SystemExit(f"QEMU migration {info['status']}: {info}")
        try:  # on PVM hosts QEMU does not carry PVM's paravirtual MSRs: the guest may not go on
            data = wait_log(dst_log, ready, timeout=5)
            continues = b"FAIL" not in data
        except SystemExit:
            continues = False
        q.close()
        ram = info.get("ram", {})
        return {"downtime_ms": float(info.get("downtime", 0)), "total_ms": float(info.get("total-time", 0)),
                "bytes": int(ram.get("transferred", 0)), "iterations": int(ram.get("dirty-sync-count", 0)),
                "throttle": int(info.get("cpu-throttle-percentage", 0)), "continues": continues}
    finally:
        for p in (src, dst):
            p.kill()
            p.wait(10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,1024", help="guest memory sizes in MiB")
    parser.add_argument("--downtime", type=float, default=300, help="downtime limit, ms (both VMMs)")
    parser.add_argument("--workloads", default="idle,dirty")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-migrate-", dir="/tmp")
    make_test_ca(os.path.join(work, "tls"))
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"downtime limit {args.downtime:g} ms; QEMU: {QEMU or 'not installed'}")
    header = (f"{'case':<16}{'VMM':<10}{'downtime ms':>12}{'total ms':>10}{'wire/mem':>10}"
              f"{'passes':>8}{'throttle':>9}  guest goes on")
    print(header)
    print("-" * len(header))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for workload in args.workloads.split(","):
                rows = [("xvm tls", run_xvm(work, size, workload, args.downtime, True)),
                        ("xvm tcp", run_xvm(work, size, workload, args.downtime, False))]
                if QEMU:
                    rows.append(("qemu tcp", run_qemu(work, size, workload, args.downtime)))
                for vmm, r in rows:
                    print(f"{f'{size} MiB {workload}':<16}{vmm:<10}{r['downtime_ms']:>12.1f}{r['total_ms']:>10.0f}"
                          f"{r['bytes'] / (size << 20):>10.3f}{r['iterations']:>8}{r['throttle']:>8}%  "
                          f"{'yes' if r['continues'] else 'NO'}")
                if QEMU:
                    q = rows[-1][1]
                    for vmm, r in rows[:-1]:
                        print(f"{'':<16}{vmm + '/qemu':<10}{r['downtime_ms'] / max(q['downtime_ms'], 0.1):>11.2f}x"
                              f"{r['total_ms'] / max(q['total_ms'], 0.1):>9.2f}x")
                sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

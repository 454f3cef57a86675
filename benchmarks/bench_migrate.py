"""Live migration on loopback: xvm (two embedded hosts, TLS 1.3 VMM to VMM, and plain TCP)
beside QEMU (``-accel kvm -M microvm``, ``-incoming tcp:`` + QMP ``migrate``, plain TCP) for
the same guest and the same downtime limit, in one run.

Workloads: "idle" is the busy test guest (a counter: a handful of pages dirtied); "dirty" is
the dirty test guest rewriting a 64 MiB working set at full speed (auto-converge on in both).
Printed per case: downtime, total time, bytes on the wire ÷ guest memory, and whether the
guest goes on on the destination (QEMU does not migrate PVM's paravirtual MSRs, so on a PVM
host its destination guest may not).

The downtimes do not all span the same:

- "full": xvm's ``downtime_ms``, from the source's pause until the destination's RUNNING
  reached the source (the destination loaded the state and let its vCPUs go).
- "sent": xvm's ``downtime_sent_ms``, from the pause until the last byte of the state was
  handed to the connection -- what QEMU measures: its ``downtime`` (query-migrate) runs from
  ``migration_stop_vm()`` (migration_downtime_start, before vm_stop_force_state) to
  ``migration_completion_end()`` / ``migration_calculate_complete()`` (migration_downtime_end)
  on the source, once ``qemu_savevm_state_complete_precopy()`` flushed the device state into
  the socket (and, only with the return-path capability, which this run leaves off, the
  destination's SHUT).  The destination's loading of the state and the start of its vCPUs are
  not in it.  QEMU's clock there is QEMU_CLOCK_REALTIME in whole milliseconds.
- "guest": seen from outside the guest: the longest time the guest's counter (``busy_counter``,
  the idle workload) stood still, read from the source's then the destination's guest RAM
  through /proc/PID/mem every millisecond (its resolution; the reader costs the VMMs little CPU) -- from the last change seen on the source to the first
  value on the destination above the source's last.  n/a where the guest does not go on.

The ratios compare like with like: xvm's "sent" to QEMU's own figure (and xvm's full span to
QEMU's, which is shorter by construction).

    PYTHONPATH=$PWD python3 benchmarks/bench_migrate.py [--sizes 256,1024] [--downtime 300] [--rounds N]
        [--workloads idle,dirty] [--steps] [--no-guest-gap]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import guest  # noqa: E402

import xvm  # noqa: E402
from xvm.host.local import LocalHost  # noqa: E402
from xvm.migration.tls import make_test_ca  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
WATCH = True  # --no-guest-gap: no CounterWatch
PHASES = False  # --steps: each switchover step of xvm's (median ms), source and destination
PERIOD = 0.001  # seconds between two reads of the guest counter (CounterWatch)
WORKLOADS = {"idle": ("busy", "shift=30", "count"), "dirty": ("dirty", "mib=64 shift=4", "dirty: pass")}


def symbol_address(elf, name):
    out = subprocess.run(["nm", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise SystemExit(f"{elf} has no symbol {name}")


def ram_base(pid, size_mib, memfd=None):
    """Where guest-physical address 0 is mapped in process ``pid``: the memfd mapping named
    ``memfd`` (xvm) or the anonymous read-write mapping of the guest's size (QEMU)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if memfd is not None and name.startswith(f"/memfd:{memfd}") and int(fields[2], 16) == 0:
                return start
            if memfd is None and not name and fields[1].startswith("rw") and end - start == size_mib << 20:
                return start
    return None


class CounterWatch:
    """Reads a 64-bit guest counter at guest-physical ``gpa`` in the source's then the
    destination's guest RAM (processes found by ``source()`` / ``destination()``, pid or None)
    every PERIOD; :meth:`gap_ms` is the longest the guest was seen standing still."""

    def __init__(self, gpa, size_mib, source, destination, memfd=None):
        self.gpa, self.size_mib, self.memfd = gpa, size_mib, memfd
        self.finders = {"src": source, "dst": destination}
        self.samples = {"src": [], "dst": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self, side):
        pid = self.finders[side]()
        if not pid:
            return None
        try:
            base = ram_base(pid, self.size_mib, self.memfd)
            return (os.open(f"/proc/{pid}/mem", os.O_RDONLY), base + self.gpa) if base is not None else None
        except OSError:
            return None

    def _run(self):
        open_ = {"src": None, "dst": None}
        done = set()
        while not self._stop.is_set():
            for side in ("src", "dst"):
                if side in done:
                    continue
                if open_[side] is None:
                    open_[side] = self._open(side)
                    if open_[side] is None:
                        continue
                fd, address = open_[side]
                try:
                    value = int.from_bytes(os.pread(fd, 8, address), "little")
                except OSError:  # the process ended
                    os.close(fd)
                    done.add(side)
                    continue
                self.samples[side].append((time.monotonic(), value))
            time.sleep(PERIOD)
        for side, item in open_.items():
            if item is not None and side not in done:
                os.close(item[0])

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def gap_ms(self):
        src, dst = self.samples["src"], self.samples["dst"]
        if not src or not dst:
            return None
        last = src[-1][1]
        stopped = next((t for t, v in reversed(src) if v != last), None)
        stopped = src[0][0] if stopped is None else stopped
        # the first sample of the source's last value: from there on it stood still
        stopped = next(t for t, v in src if v == last and t >= stopped)
        resumed = next((t for t, v in dst if v > last), None)
        return None if resumed is None else (resumed - stopped) * 1000


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
        watch = None
        if workload == "idle" and WATCH:
            watch = CounterWatch(symbol_address(guest(kernel), "busy_counter"), size_mib,
                                 lambda: _vmm_pid(hosts[0], dom.uuid), lambda: _vmm_pid(hosts[1], dom.uuid),
                                 memfd="xvm-ram")
        try:
            stats = dom.migrate(listener.uri, tls_dir=tls_dir, insecure=not tls, downtime_ms=downtime_ms,
                                timeout_s=120)
            moved = hosts[1].lookup("m")
            moved.console.expect(ready, 30)
        finally:
            if watch is not None:
                time.sleep(0.05)
                watch.stop()
        if "FAIL" in moved.console.log().decode(errors="replace"):
            raise SystemExit("xvm: the guest found a stale page after the migration")
        moved.destroy()
        return {"downtime_ms": stats.downtime_ms, "sent_ms": getattr(stats, "downtime_sent_ms", None),
                "guest_ms": watch.gap_ms() if watch is not None else None,
                "steps": getattr(stats, "switchover_ms", None),
                "total_ms": stats.total_ms, "bytes": stats.bytes_sent,
                "iterations": stats.iterations, "throttle": stats.throttle_pct, "continues": True}
    finally:
        for h in hosts:
            for d in h.domains():
                try:
                    d.destroy()
                except xvm.XvmError:
                    pass
            h.close()


def _vmm_pid(host, uuid):
    try:
        with open(host.state_dir.vmm_pidfile(str(uuid))) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


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
        self.events = []  # (name, data, timestamp in s: QEMU's own clock, microseconds)
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self):
        while True:
            message = json.loads(self.file.readline())
            if "event" not in message:
                return message
            stamp = message.get("timestamp", {})
            self.events.append((message["event"], message.get("data", {}),
                                stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6))

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


def _stop_to_completed_ms(events):
    """QEMU's switchover to the microsecond, from its QMP events' own timestamps: the STOP
    event (sent once its vCPUs are paused, so a little after its ``downtime`` starts) to the
    MIGRATION ``completed`` event (the state sent).  Its ``downtime`` is in whole ms."""
    stop = next((t for name, _, t in events if name == "STOP"), None)
    done = next((t for name, data, t in events if name == "MIGRATION" and data.get("status") == "completed"), None)
    return (done - stop) * 1000 if stop is not None and done is not None and done >= stop else None


def run_qemu(work, size_mib, workload, downtime_ms):
    kernel, cmdline, ready = WORKLOADS[workload]
    kernel = guest(kernel)
    port = free_port()
    src, src_log, src_qmp = qemu(work, f"src{size_mib}{workload}", size_mib, kernel, cmdline)
    dst, dst_log, dst_qmp = qemu(work, f"dst{size_mib}{workload}", size_mib, kernel, cmdline,
                                 ["-incoming", f"tcp:127.0.0.1:{port}"])
    watch = None
    try:
        wait_log(src_log, ready)
        time.sleep(0.5)
        if workload == "idle" and WATCH:
            watch = CounterWatch(symbol_address(kernel, "busy_counter"), size_mib, lambda: src.pid, lambda: dst.pid)
        q = Qmp(src_qmp)
        q.call("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True},
                                                         {"capability": "events", "state": True}])
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
        q.call("query-status")  # every event emitted by now has been read before its reply
        events_ms = _stop_to_completed_ms(q.events)
        try:  # on PVM hosts QEMU does not carry PVM's paravirtual MSRs: the guest may not go on
            data = wait_log(dst_log, ready, timeout=5)
            continues = b"FAIL" not in data
        except SystemExit:
            continues = False
        q.close()
        if watch is not None:
            watch.stop()
        ram = info.get("ram", {})
        downtime = float(info.get("downtime", 0))
        return {"downtime_ms": None, "sent_ms": downtime, "events_ms": events_ms,
                "guest_ms": watch.gap_ms() if watch else None, "steps": None,
                "total_ms": float(info.get("total-time", 0)),
                "bytes": int(ram.get("transferred", 0)), "iterations": int(ram.get("dirty-sync-count", 0)),
                "throttle": int(info.get("cpu-throttle-percentage", 0)), "continues": continues}
    finally:
        if watch is not None:
            watch.stop()
        for p in (src, dst):
            p.kill()
            p.wait(10)


def _median(results):
    """One result of several runs: the median of each figure (of the runs that have it)."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if r[key] is not None]
        if key == "steps":
            out[key] = {side: _median_steps([v.get(side) or {} for v in values]) for side in ("source", "destination")}
        elif key == "continues":
            out[key] = all(values)
        else:
            out[key] = statistics.median(values) if values else None
    return out


def _median_steps(runs):
    names = []
    for run in runs:
        names += [n for n in run if n not in names]
    return {n: statistics.median([run[n] for run in runs if n in run]) for n in names}


def _ms(value):
    return f"{value:>8.1f}" if value is not None else f"{'n/a':>8}"


def _ratio(value, reference):
    if value is None or reference is None:
        return "n/a"
    return f"{value / max(reference, 0.1):.2f}x"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,1024", help="guest memory sizes in MiB")
    parser.add_argument("--downtime", type=float, default=300, help="downtime limit, ms (both VMMs)")
    parser.add_argument("--workloads", default="idle,dirty")
    parser.add_argument("--rounds", type=int, default=1, help="migrations per case and VMM (medians printed)")
    parser.add_argument("--no-guest-gap", action="store_true",
                        help="do not watch the guest's counter (the 'guest' column; its reader takes some CPU)")
    parser.add_argument("--steps", action="store_true", help="print the steps of xvm's switchovers (median ms)")
    args = parser.parse_args()
    global WATCH, PHASES
    WATCH, PHASES = not args.no_guest_gap, args.steps
    work = tempfile.mkdtemp(prefix="bench-migrate-", dir="/tmp")
    make_test_ca(os.path.join(work, "tls"))
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"downtime limit {args.downtime:g} ms; QEMU: {QEMU or 'not installed'}")
    print("downtime ms -- full: pause to the destination running (xvm); sent: pause to the state "
          "handed to the socket (QEMU's 'downtime'); guest: the guest's counter seen standing still")
    header = (f"{'case':<16}{'VMM':<10}{'full':>8}{'sent':>8}{'guest':>8}{'total ms':>10}{'wire/mem':>10}"
              f"{'passes':>8}{'throttle':>9}  guest goes on")
    print(header)
    print("-" * len(header))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for workload in args.workloads.split(","):
                runs = [("xvm tls", lambda: run_xvm(work, size, workload, args.downtime, True)),
                        ("xvm tcp", lambda: run_xvm(work, size, workload, args.downtime, False))]
                if QEMU:
                    runs.append(("qemu tcp", lambda: run_qemu(work, size, workload, args.downtime)))
                rows = [(vmm, _median([run() for _ in range(args.rounds)])) for vmm, run in runs]
                for vmm, r in rows:
                    guest_ms = r["guest_ms"] if r["continues"] else None
                    print(f"{f'{size} MiB {workload}':<16}{vmm:<10}{_ms(r['downtime_ms'])}{_ms(r['sent_ms'])}"
                          f"{_ms(guest_ms)}{r['total_ms']:>10.0f}"
                          f"{r['bytes'] / (size << 20):>10.3f}{r['iterations']:>8}{r['throttle']:>8}%  "
                          f"{'yes' if r['continues'] else 'NO'}")
                    if PHASES and r.get("steps") and any(r["steps"].values()):
                        for side in ("source", "destination"):
                            steps = " ".join(f"{n} {v:.2f}" for n, v in r["steps"][side].items())
                            print(f"{'':<16}  {side[:3]} ms: {steps}")
                if QEMU:
                    q = rows[-1][1]
                    if q.get("events_ms") is not None:
                        print(f"{'':<16}{'qemu':<10}  STOP to MIGRATION completed (QMP event times): "
                              f"{q['events_ms']:.2f} ms")
                    for vmm, r in rows[:-1]:
                        print(f"{'':<16}{vmm + '/qemu':<10}  sent/qemu {_ratio(r['sent_ms'], q['sent_ms'])}"
                              f"  sent/qemu-events {_ratio(r['sent_ms'], q.get('events_ms'))}"
                              f"  full/qemu {_ratio(r['downtime_ms'], q['sent_ms'])}"
                              f"  guest {_ratio(r['guest_ms'], q['guest_ms'] if q['continues'] else None)}"
                              f"  total {_ratio(r['total_ms'], q['total_ms'])}")
                sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

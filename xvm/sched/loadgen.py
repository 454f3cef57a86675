"""A child process of CPU-bound threads for measuring the scheduler (tests and benchmarks).

    python3 -m xvm.sched.loadgen THREADS [--pattern busy|tick-dodger]

prints one JSON line ``{"pid": ..., "tids": [...]}`` once every thread runs, then works until
killed; each SIGUSR1 makes it print ``{"loops": [...]}``, the work loops done per thread.
``busy`` threads hash large buffers (hashlib drops the GIL for them, so the threads run in
parallel like vCPU threads in ``KVM_RUN``).  ``tick-dodger`` threads run for just under
a scheduler tick and then sleep briefly: Xen's adversarial case for tick-sampled accounting.
"""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

_BUFFER = bytes(256 * 1024)


def _busy(started, loops, index):
    started.release()
    while True:
        hashlib.sha256(_BUFFER).digest()
        loops[index] += 1


def _tick_dodger(started, loops, index, tick_s):
    started.release()
    while True:
        end = time.perf_counter() + tick_s * 0.95
        while time.perf_counter() < end:
            loops[index] += 1
        time.sleep(tick_s * 0.05)


class Load:
    """A running load process: ``pid``, ``tids`` (its worker threads); :meth:`stop` kills it."""

    def __init__(self, threads, pattern="busy", tick_ms=4.0):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xvm.sched.loadgen", str(threads), "--pattern", pattern,
             "--tick-ms", str(tick_ms)],
            stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"load process exited with status {self.process.returncode}")
        info = json.loads(line)
        self.pid, self.tids = info["pid"], info["tids"]

    def loops(self):
        """Work loops each thread has done so far."""
        self.process.send_signal(signal.SIGUSR1)
        return json.loads(self.process.stdout.readline())["loops"]

    def stop(self):
        """SIGKILL the process and reap it (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("threads", type=int)
    parser.add_argument("--pattern", choices=("busy", "tick-dodger"), default="busy")
    parser.add_argument("--tick-ms", type=float, default=4.0)
    args = parser.parse_args(argv)
    tids, lock = [], threading.Lock()
    started = threading.Semaphore(0)
    loops = [0] * args.threads

    def run():
        with lock:
            index = len(tids)
            tids.append(threading.get_native_id())
        if args.pattern == "busy":
            _busy(started, loops, index)
        else:
            _tick_dodger(started, loops, index, args.tick_ms / 1000)

    def report(signum, frame):
        sys.stdout.write(json.dumps({"loops": list(loops)}) + "\n")
        sys.stdout.flush()

    signal.signal(signal.SIGUSR1, report)

    for _ in range(args.threads):
        threading.Thread(target=run, daemon=True).start()
    for _ in range(args.threads):
        started.acquire()
    sys.stdout.write(json.dumps({"pid": os.getpid(), "tids": tids}) + "\n")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

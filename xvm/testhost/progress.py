"""The inner run's heartbeat: how the outer side tells a slow run from a hung TCG machine.

Inside the test host a job may append *events* to the file named by ``$XVM_TESTHOST_PROGRESS``
(in the results share, so the host sees each line as it is written), one per line::

    start NAME      NAME began (a test's node id, or any step of a job)
    end NAME        NAME finished
    busy NAME       NAME is still running and used CPU since the last event
    WORD TEXT       anything else is progress too (e.g. "collected 12")

:class:`TestHost` counts a run as hung when neither this file nor the serial console has grown
for ``stall_timeout`` seconds, and names the NAME that was running (:class:`Progress`).

Loaded into a pytest with ``-p xvm.testhost.progress`` this module is a plugin that writes
``start``/``end`` for every test and, while a test runs, ``busy`` every quarter of
``$XVM_TESTHOST_STALL_TIMEOUT`` if the test's processes (the pytest and its descendants) used
CPU meanwhile -- a nested guest booting slowly is progress, a machine that stopped is not.
With pytest-xdist (``-n``) the controller reports every worker's tests, several at once, and
the workers report nothing.  Without ``$XVM_TESTHOST_PROGRESS`` the plugin does nothing.
"""
import os
import threading
import time

PROGRESS_ENV = "XVM_TESTHOST_PROGRESS"
STALL_ENV = "XVM_TESTHOST_STALL_TIMEOUT"
DEFAULT_TICK = 30.0


class Progress:
    """The outer side's view of a progress file: how far it was read, what is running."""

    def __init__(self, path):
        self.path = path
        self.size = 0
        self.last = None  # the last event line
        self._running = {}  # NAMEs started (or busy) without their "end", oldest first
        self._partial = b""

    @property
    def running(self):
        """NAME of the last "start" without its "end" (several run at once with pytest -n)."""
        return next(reversed(self._running), None)

    def poll(self) -> bool:
        """Read what was appended since the last call; True if anything was."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.size)
                data = f.read()
        except OSError:
            return False
        if not data:
            return False
        self.size += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.feed(line.decode(errors="replace"))
        return True

    def feed(self, line):
        event, _, name = line.strip().partition(" ")
        if not event:
            return
        self.last = line.strip()
        if event in ("start", "busy"):
            self._running.setdefault(name, None)
        elif event == "end":
            self._running.pop(name, None)

    def describe(self) -> str:
        """What the run was doing, for an error message."""
        if self._running:
            return "while running " + ", ".join(self._running)
        if self.last:
            return f"after the progress event {self.last!r}"
        return "before the job reported any progress"


def report(event, name=""):
    """Append one event to ``$XVM_TESTHOST_PROGRESS`` (no-op without it)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    line = f"{event} {name}".strip().replace("\n", "\\n") + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError:
        pass  # a heartbeat must never fail the job


def tree_cpu_seconds(root_pid=None) -> float:
    """User+system CPU seconds of ``root_pid`` (default: this process, all its threads) and
    every live descendant, from /proc."""
    root_pid = root_pid or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
        pid = int(entry)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo, seen = 0.0, [root_pid], set()
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class _Ticker:
    """While tests run, reports ``busy NAME`` for each every ``interval`` s if CPU was used
    (not counting the ticker's own look at /proc).  Under pytest-xdist the controller's tree
    holds the workers, so their tests count."""

    def __init__(self, interval):
        self.interval = interval
        self.nodeids = {}
        self._last = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    def start(self, nodeid):
        with self._lock:
            if not self.nodeids:
                self._last = None  # the test's own baseline, taken at the next look
            self.nodeids[nodeid] = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="xvm-progress", daemon=True)
            self._thread.start()

    def stop(self, nodeid):
        with self._lock:
            self.nodeids.pop(nodeid, None)

    def close(self):
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self):
        own = 0.0
        while True:
            before = time.thread_time()
            now = tree_cpu_seconds() - own
            own += time.thread_time() - before
            with self._lock:
                if self._last is not None and now > self._last + 0.05:
                    for nodeid in self.nodeids:
                        report("busy", nodeid)
                self._last = now
            if self._wake.wait(self.interval):
                return


def _tick_interval():
    try:
        stall = float(os.environ.get(STALL_ENV) or 0)
    except ValueError:
        stall = 0
    return max(1.0, stall / 4) if stall > 0 else DEFAULT_TICK


_ticker = None


# --- pytest hooks (active with -p xvm.testhost.progress) ----------------------------------------


_in_worker = False  # a pytest-xdist worker: its controller reports its tests (the hooks run there too)


def pytest_configure(config):
    global _in_worker
    _in_worker = hasattr(config, "workerinput")


def pytest_sessionstart(session):
    global _ticker
    if os.environ.get(PROGRESS_ENV) and not _in_worker:
        _ticker = _Ticker(_tick_interval())
        report("session", "start")


def pytest_collection_finish(session):
    if not _in_worker:
        report("collected", str(len(session.items)))


def pytest_runtest_logstart(nodeid, location):
    if _in_worker:
        return
    report("start", nodeid)
    if _ticker is not None:
        _ticker.start(nodeid)


def pytest_runtest_logfinish(nodeid, location):
    if _in_worker:
        return
    if _ticker is not None:
        _ticker.stop(nodeid)
    report("end", nodeid)


def pytest_sessionfinish(session, exitstatus):
    global _ticker
    if _in_worker:
        return
    if _ticker is not None:
        _ticker.close()
        _ticker = None
    report("session", f"finished {exitstatus}")

"""The HVM test host's machinery, booting the TCG machine itself (no /dev/kvm needed, but
QEMU and the test host's cached kernels: scripts/setup-testhost.sh). Marked ``hvm``: they need
the test host, so the quick tier (``-m "not hvm"``) leaves them out.

* a checkout under /tmp (the test host's own /tmp) is visible to the job at the same path;
* a job that goes silent is stopped by the heartbeat within the stall limit, retried once, and
  the error names what was running.
"""
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from xvm.testhost import TestHost, TestHostCancelled, TestHostTimeout, qemu_path

REPO = Path(__file__).resolve().parents[2]
STALL = 10.0  # seconds of silence that count as a hang here
MARGIN = 15.0  # polling, killing QEMU, a late console line

pytestmark = [
    pytest.mark.hvm,
    pytest.mark.skipif(qemu_path() is None, reason="needs qemu-system-x86_64 (run scripts/setup-testhost.sh)"),
    pytest.mark.skipif(bool(os.environ.get("XVM_TESTHOST_INNER")), reason="already inside the test host"),
]


def test_checkout_under_tmp_runs_in_the_test_host():
    checkout = Path(tempfile.mkdtemp(prefix="xvm-checkout-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "xvm", checkout / "xvm", ignore=shutil.ignore_patterns("__pycache__"))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run(
            [sys.executable, "-m", "xvm.testhost", "run", "--mode", "tcg", "--timeout", "300", "--",
             "python3", "-c", "import os, xvm; print('XVM-RAN-FROM', xvm.__file__, os.getcwd())"],
            cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=700)
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
    assert run.returncode == 0, run.stdout
    assert f"XVM-RAN-FROM {checkout}/xvm/__init__.py {checkout}\n" in run.stdout, run.stdout
    assert "exit status 0 (tcg," in run.stdout


def test_a_silent_job_is_stopped_by_the_heartbeat_and_retried_once(tmp_path):
    name = "tests/hvm/test_fake.py::test_sleeps_forever"
    # Reports that a test started (as the inner pytest's progress plugin does), then prints
    # nothing and sleeps: a hung TCG machine looks exactly like this from outside.
    command = f'echo "start {name}" >> "$XVM_TESTHOST_PROGRESS"; exec sleep 3600'
    for scenario in range(2):
        # On a loaded machine the second attempt's own kernel may report a stall while it still
        # boots: stopped and retried as it should be, but the job never started, so the
        # heartbeat went untried.  Then the scenario runs once more.
        results = tmp_path / f"scenario-{scenario}"
        results.mkdir()
        stream = io.StringIO()
        host = TestHost(mode="tcg", retries=1, stall_timeout=STALL, stream=stream)
        start = time.monotonic()
        with pytest.raises(TestHostTimeout) as caught:
            host.run(command, timeout=600, cwd=REPO, results_dir=results)
        wall = time.monotonic() - start
        error = caught.value
        assert error.attempts == 2
        if not (error.boot_time is None and error.reason.startswith("the test host's kernel reported a hang")):
            break
    assert error.running == name
    assert f"no console output and no progress for {STALL:g} s while running {name}" in str(error)
    assert error.boot_time is not None
    silent = error.duration - error.boot_time
    assert STALL <= silent <= STALL + MARGIN, f"stopped after {silent:.1f} s of silence"
    assert wall < 2 * (host.boot_timeout + STALL + MARGIN)
    # the first attempt hung too (the same stall, or, on a loaded machine, a soft lockup its kernel reported)
    assert re.search(r"attempt 1 hung \((no console output and no progress|the test host's kernel reported)"
                     r".*\); retrying", stream.getvalue()), stream.getvalue()
    ctl = results / ".xvm-testhost"
    assert (ctl / "console-1.log").exists() and (ctl / "console-2.log").exists()
    assert (ctl / "progress-2.log").read_text() == f"start {name}\n"


def test_a_test_host_whose_kernel_crashes_is_retried_once(tmp_path):
    """The TCG machine's own kernel failing (it happened once: a BUG in nested SVM under
    emulation, and all 32 HVM tests failed with it) is retried like a hang.  Here the job
    crashes the kernel on the first attempt only (a mark in the results share remembers)."""
    command = ('mark="$(dirname "$XVM_TESTHOST_PROGRESS")/crashed-once"; '
               'if [ -e "$mark" ]; then echo XVM-SECOND-ATTEMPT; exit 0; fi; '
               'touch "$mark"; sync; echo c > /proc/sysrq-trigger; sleep 60')
    stream = io.StringIO()
    result = TestHost(mode="tcg", retries=1, stream=stream).run(command, timeout=300, cwd=REPO, results_dir=tmp_path)
    assert result.exit_status == 0 and result.attempts == 2, stream.getvalue()[-2000:]
    assert "XVM-SECOND-ATTEMPT" in result.output
    assert re.search(r"attempt 1: the test host's kernel crashed \((Kernel panic|BUG|Oops)[^)]*\); retrying",
                     stream.getvalue()), stream.getvalue()[-2000:]


def test_cancel_stops_a_running_job_at_once(tmp_path):
    host = TestHost(mode="tcg", retries=1)
    outcome = {}

    def run():
        try:
            host.run('echo "started" >> "$XVM_TESTHOST_PROGRESS"; exec sleep 3600', timeout=600, cwd=REPO,
                     results_dir=tmp_path)
        except TestHostCancelled as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    progress = tmp_path / ".xvm-testhost" / "progress"
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text()):
        assert thread.is_alive() and time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    cancelled = time.monotonic()
    host.cancel()
    thread.join(30)
    assert not thread.is_alive() and "cancelled after" in str(outcome.get("error")), outcome
    assert time.monotonic() - cancelled < 10
    assert not _qemu_children(), "QEMU outlived the cancelled run"
    with pytest.raises(TestHostCancelled):
        host.run("true", timeout=60, cwd=REPO, results_dir=tmp_path)


def _qemu_children(parent=None, descendants=False):
    """QEMU processes whose parent is ``parent`` (default: this process), or with
    ``descendants`` any of its descendants.  Children only by default: the test host this
    session runs beside its tests is a grandchild (its parent is the xvm.testhost.job
    process) and must not count as one a test left behind."""
    parent = os.getpid() if parent is None else parent
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        comm, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        procs[int(entry.name)] = (comm, int(fields[1]))
    found = []
    for pid, (comm, _) in procs.items():
        ancestor = procs[pid][1]
        while descendants and ancestor in procs and ancestor not in (0, 1, parent):
            ancestor = procs[ancestor][1]
        if comm.startswith("qemu-system") and ancestor == parent:
            found.append(pid)
    return found


PLAIN_TEST = """
import os, time
from pathlib import Path

""" + inspect.getsource(_qemu_children) + """

def open_fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the one listdir used
    return found


def test_plain_runs_while_the_test_host_runs():
    import threading
    threads, fds = set(threading.enumerate()), open_fds()
    deadline = time.monotonic() + 30
    while not _qemu_children(descendants=True):
        assert time.monotonic() < deadline, "no test host running beside this test"
        time.sleep(0.1)
    # At the lowest priority: it takes only the CPU time this session's tests leave.
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in _qemu_children(descendants=True)] == [19]
    time.sleep(2)
    # What the tests that check for leaks (no_leaks) compare: nothing of the test host here.
    assert set(threading.enumerate()) == threads
    assert open_fds() == fds
"""


def test_the_test_host_runs_beside_the_other_tests_and_its_items_come_last():
    """With XVM_HVM_BACKGROUND=1, at nice 19; the other tests see no thread and no descriptor of it."""
    project = Path(tempfile.mkdtemp(prefix="xvm-hvm-background-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "xvm", project / "xvm", ignore=shutil.ignore_patterns("__pycache__"))
        (project / "tests" / "hvm").mkdir(parents=True)
        shutil.copy(REPO / "tests" / "hvm" / "conftest.py", project / "tests" / "hvm" / "conftest.py")
        (project / "tests" / "hvm" / "test_tiny.py").write_text("def test_inside():\n    pass\n")
        (project / "tests" / "test_plain.py").write_text(PLAIN_TEST)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "XVM_HVM_STREAM")}
        env["PYTHONPATH"] = str(project)
        env["XVM_HVM_BACKGROUND"] = "1"
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "tests/hvm", "tests"],
                             cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=700)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    assert run.returncode == 0, run.stdout
    order = [line.split(" ", 1)[0] for line in run.stdout.splitlines() if " PASSED" in line]
    assert order == ["tests/test_plain.py::test_plain_runs_while_the_test_host_runs",
                     "tests/hvm/test_tiny.py::test_inside"], run.stdout

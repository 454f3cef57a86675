"""The HVM test host's pytest integration without booting it: the ``hvm`` marker, the inner
run's heartbeat plugin, and how a test host that cannot start is reported (one clear error
per test, a summary line, never a crash of pytest's own reporting)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xvm.testhost import hardware_virtualization, qemu_path
from xvm.testhost.progress import Progress, tree_cpu_seconds

REPO = Path(__file__).resolve().parents[2]
HVM_CONFTEST = REPO / "tests" / "hvm" / "conftest.py"


def _pytest(args, cwd, env=None, timeout=120):
    full_env = dict(os.environ)
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + pythonpath)
    full_env.pop("PYTEST_ADDOPTS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, env=full_env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, text=True)


def test_not_hvm_deselects_every_hvm_test():
    everything = _pytest(["--collect-only", "-q", "tests/hvm"], REPO)
    assert everything.returncode == 0, everything.stdout
    quick = _pytest(["--collect-only", "-q", "-m", "not hvm", "tests/hvm"], REPO)
    assert quick.returncode == 5, quick.stdout  # nothing selected
    collected = sum(1 for line in everything.stdout.splitlines() if "::" in line)
    assert collected > 0
    assert f"no tests collected ({collected} deselected)" in quick.stdout


# --- the heartbeat -------------------------------------------------------------------------------


def test_progress_reads_appended_events_and_names_the_running_test(tmp_path):
    path = tmp_path / "progress"
    progress = Progress(path)
    assert not progress.poll()  # no file yet
    assert progress.describe() == "before the job reported any progress"
    path.write_text("session start\ncollected 2\nstart tests/a.py::test_x[1 2]\npartial")
    assert progress.poll()
    assert progress.running == "tests/a.py::test_x[1 2]"
    assert not progress.poll()
    with open(path, "a") as f:
        f.write(" line\nend tests/a.py::test_x[1 2]\n")
    assert progress.poll()
    assert progress.running is None
    assert progress.describe() == "after the progress event 'end tests/a.py::test_x[1 2]'"
    with open(path, "a") as f:
        f.write("busy tests/a.py::test_y\n")
    progress.poll()
    assert progress.describe() == "while running tests/a.py::test_y"


def test_progress_follows_tests_running_at_once(tmp_path):
    """pytest -n inside: two workers' tests start and end interleaved."""
    path = tmp_path / "progress"
    progress = Progress(path)
    path.write_text("start a.py::t1\nstart b.py::t2\nbusy a.py::t1\n")
    progress.poll()
    assert progress.describe() == "while running a.py::t1, b.py::t2"
    with open(path, "a") as f:
        f.write("end a.py::t1\n")
    progress.poll()
    assert progress.running == "b.py::t2" and progress.describe() == "while running b.py::t2"
    with open(path, "a") as f:
        f.write("end b.py::t2\n")
    progress.poll()
    assert progress.running is None


def test_tree_cpu_seconds_counts_live_children():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 1.0: pass\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        before = tree_cpu_seconds()
        while tree_cpu_seconds(child.pid) < 0.9:
            assert child.poll() is None
        assert tree_cpu_seconds() >= before + 0.5
    finally:
        child.communicate(b"", timeout=30)


INNER_TESTS = '''
import time

def test_busy():
    t = time.process_time()
    while time.process_time() - t < 3.5:
        pass

def test_idle():
    time.sleep(3.5)
'''


def test_progress_plugin_reports_starts_ends_and_busy_tests(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    progress = tmp_path / "progress"
    run = _pytest(["-p", "xvm.testhost.progress", "-q", "test_inner.py"], tmp_path,
                  env={"XVM_TESTHOST_PROGRESS": str(progress), "XVM_TESTHOST_STALL_TIMEOUT": "4"})
    assert run.returncode == 0, run.stdout
    events = progress.read_text().splitlines()
    assert events[:2] == ["session start", "collected 2"]
    assert events[-1] == "session finished 0"
    body = events[2:-1]
    busy, idle = "test_inner.py::test_busy", "test_inner.py::test_idle"
    assert body[0] == f"start {busy}" and body[body.index(f"end {busy}") + 1] == f"start {idle}"
    assert f"busy {busy}" in body  # ticks every 1 s while it burns CPU
    assert f"busy {idle}" not in body  # a sleeping test is no progress
    assert body[-1] == f"end {idle}"


def test_progress_plugin_under_xdist_reports_each_test_once_from_the_controller(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "test_other.py").write_text(INNER_TESTS)
    progress = tmp_path / "progress"
    run = _pytest(["-p", "xvm.testhost.progress", "-p", "xdist", "-n", "2", "--dist", "loadfile", "-q",
                   "test_inner.py", "test_other.py"], tmp_path,
                  env={"XVM_TESTHOST_PROGRESS": str(progress), "XVM_TESTHOST_STALL_TIMEOUT": "4"})
    assert run.returncode == 0, run.stdout
    events = progress.read_text().splitlines()
    assert events.count("session start") == 1 and events[-1] == "session finished 0"
    names = [f"{f}::{t}" for f in ("test_inner.py", "test_other.py") for t in ("test_busy", "test_idle")]
    for name in names:
        assert events.count(f"start {name}") == 1 and events.count(f"end {name}") == 1, events
    starts = [i for i, e in enumerate(events) if e.startswith("start ")]
    ends = [i for i, e in enumerate(events) if e.startswith("end ")]
    assert starts[1] < ends[0], f"the two workers' tests did not run at once: {events}"
    assert any(e.startswith("busy ") and e.endswith("::test_busy") for e in events)


# --- a test host that cannot start ----------------------------------------------------------------

TINY_HVM_TESTS = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n"


def _tiny_hvm_project(parent):
    project = Path(tempfile.mkdtemp(prefix="xvm-hvm-summary-", dir=parent))
    (project / "tests" / "hvm").mkdir(parents=True)
    shutil.copy(HVM_CONFTEST, project / "tests" / "hvm" / "conftest.py")
    (project / "tests" / "hvm" / "test_tiny.py").write_text(TINY_HVM_TESTS)
    return project


@pytest.mark.skipif(qemu_path() is None, reason="without qemu-system-x86_64 hvm tests are skipped, not started")
@pytest.mark.skipif(hardware_virtualization(), reason="hvm tests run directly here")
@pytest.mark.parametrize("case", ["cwd-not-shareable", "not-set-up", "bad-stall-timeout"])
def test_a_test_host_that_cannot_start_fails_each_test_and_keeps_the_summary(case, tmp_path):
    # A checkout under /dev/shm cannot be shown to the test host; an empty cache is not set up.
    parent = "/dev/shm" if case == "cwd-not-shareable" else tmp_path
    if not os.access(parent, os.W_OK):
        pytest.skip(f"{parent} is not writable here")
    env = {"XVM_HVM_STALL_TIMEOUT": "soon" if case == "bad-stall-timeout" else ""}
    if case == "not-set-up":
        env["XVM_CACHE"] = str(tmp_path / "empty-cache")
    project = _tiny_hvm_project(parent)
    try:
        run = _pytest(["-q", "-rf", "tests/hvm"], project, env=env)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    out = run.stdout
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    assert run.returncode == 1, out  # tests failed; pytest itself did not
    assert "2 failed" in out.splitlines()[-1], out
    expected = {
        "cwd-not-shareable": f"cwd {project} is not visible inside the test host: /dev is the machine's own there",
        "not-set-up": "Run scripts/setup-testhost.sh",
        "bad-stall-timeout": "XVM_HVM_STALL_TIMEOUT='soon': expected a positive number of seconds",
    }[case]
    lines = out.splitlines()
    assert {"FAILED tests/hvm/test_tiny.py::test_one", "FAILED tests/hvm/test_tiny.py::test_two"} \
        == {line.split(" - ")[0] for line in lines if line.startswith("FAILED ")}, out
    errors = [line for line in lines if line.startswith("HVM test host: ") and "FAILED after" not in line]
    assert len(errors) == 2, out  # one per test: the first in full, the second in short
    assert expected in errors[0] and expected in errors[1], out
    assert errors[1].endswith("(in full at tests/hvm/test_tiny.py::test_one)"), out
    summary = [line for line in lines if line.startswith("HVM test host: FAILED after")]
    assert len(summary) == 1 and expected in summary[0], out


# --- what the test host is asked to share ---------------------------------------------------------


def test_only_directories_the_test_host_hides_are_shared_and_only_once():
    from xvm.testhost.host import _shares
    shares = _shares([(Path("/tmp/co/sub"), "cwd"), (Path("/tmp/co"), "XVM_CACHE"), (Path("/run/x"), "extra"),
                      (Path("/home/my checkout"), "cwd"), (Path("/var/cache/xvm"), "XVM_CACHE")])
    assert shares == [Path("/tmp/co"), Path("/run/x")]  # /home and /var are on the root share


@pytest.mark.parametrize("path, message", [
    ("/dev/shm/co", "cwd /dev/shm/co is not visible inside the test host: /dev is the machine's own there"),
    ("/sys/kernel", "cwd /sys/kernel is not visible inside the test host: /sys is"),
    ("/tmp/my checkout", "cwd must not contain white space: /tmp/my checkout"),
])
def test_directories_the_test_host_cannot_show_are_refused(path, message):
    from xvm.testhost import TestHost, TestHostConfigError
    with pytest.raises(TestHostConfigError, match=re.escape(message)):
        TestHost(mode="tcg").run(["true"], cwd=path)


def test_qemu_command_mounts_shares_parents_first():
    from xvm.testhost import NotPreparedError, QemuMissingError, TestHost
    host = TestHost(mode="tcg")
    try:
        argv = host.qemu_command(Path("/tmp/co/results"), shares=[Path("/tmp/co,1"), Path("/run/x")])
    except (NotPreparedError, QemuMissingError) as e:
        pytest.skip(str(e))
    append = argv[argv.index("-append") + 1].split()
    mounts = [arg for arg in append if arg.startswith(("xvm.ro=", "xvm.rw="))]
    assert mounts == ["xvm.ro=xvmshare0:/tmp/co,1", "xvm.ro=xvmshare1:/run/x", "xvm.rw=xvmresults:/tmp/co/results"]
    fsdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-fsdev"]
    assert "local,id=xvmshare0,path=/tmp/co,,1,security_model=none,readonly=on" in fsdevs
    assert "local,id=xvmresults,path=/tmp/co/results,security_model=none" in fsdevs

"""Tests under tests/hvm need hardware-assisted KVM (they boot unmodified Linux guests).

* On a machine with vmx/svm (real hardware, or inside the HVM test host) they run directly.
* Otherwise (the project's PVM machines) the outer pytest boots the TCG test host ONCE per
  session, in a process of its own (:mod:`xvm.testhost.job`), when the first of these tests
  runs (or, with XVM_HVM_BACKGROUND=1, as the session's tests start, at the lowest CPU priority,
  while the other tests run here, its items placed last), and runs all the selected tests/hvm tests inside it
  (pytest-xdist workers, whole files each); each outer item then reports the inner result of
  the same node id (pass, fail with the inner failure text, skip with the inner reason), read
  from the ``--junitxml`` the inner pytest wrote to the results share.
* Not set up (kernels not downloaded), or the test host cannot start for any other reason: each
  test fails with one clear error (the first in full), naming scripts/setup-testhost.sh where
  that is the cure. No qemu-system-x86_64 at all: they are skipped.
* Every item here is marked ``hvm`` at collection, so ``-m "not hvm"`` deselects them all.
* The inner pytest reports each test's start and end (plugin :mod:`xvm.testhost.progress`);
  a test host that shows neither such progress nor console output for XVM_HVM_STALL_TIMEOUT
  seconds (default 120) counts as hung: it is killed and the run retried once, and the error
  names the test that was running.

Environment: XVM_HVM_TIMEOUT (seconds for the inner run, default 600 + 120 per test),
XVM_HVM_STALL_TIMEOUT (seconds of silence that mean a hang, default 120),
XVM_HVM_STREAM=1 (stream the test host's console to the terminal; also with -s or -vv; the run is
then in the foreground, when the first tests/hvm item is reached),
XVM_HVM_BACKGROUND=1 (start the test host with the session's tests, beside them at nice 19, its
items placed last: nothing of it in this process, so no_leaks is not disturbed; by default it
starts when the first tests/hvm item runs, alone),
XVM_HVM_WORKERS=N (pytest-xdist workers inside, default one per test host CPU; each takes whole
files, whose tests share networks, addresses and pools; 1 runs them one after another),
XVM_HVM_PLUGINS=a,b (pytest plugins to load inside: the inner pytest runs with
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, because discovering entry points over 9p costs ~45 s under TCG;
e.g. XVM_HVM_PLUGINS=_hypothesis_pytestplugin).
The console log and junit XML stay in the results directory printed in the summary.
"""
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xvm.testhost import (NESTED_MARKER, TestHost, TestHostCancelled, TestHostConfigError, TestHostError,
                          cloud_kernel, hardware_virtualization, nested_initramfs, qemu_path)
from xvm.testhost.job import JobProcess
from xvm.testhost.junit import junit_key, read_junit

HVM_DIR = Path(__file__).resolve().parent
INNER_ENV = "XVM_TESTHOST_INNER"
SELECT_ENV = "XVM_HVM_SELECT"
DEFAULT_STALL_TIMEOUT = 120.0
PROGRESS_PLUGIN = "xvm.testhost.progress"  # the inner pytest's heartbeat
BACKGROUND_NICE = 19  # the test host beside the other tests: only the CPU time they leave


def _is_hvm_item(item) -> bool:
    return HVM_DIR == Path(str(item.fspath)).resolve().parent or HVM_DIR in Path(str(item.fspath)).resolve().parents


def pytest_configure(config):
    config.addinivalue_line("markers", "hvm: needs hardware-assisted KVM (runs inside the HVM test host on PVM machines)")


@pytest.hookimpl(tryfirst=True)
def pytest_itemcollected(item):
    # Before -m deselects anything: `-m "not hvm"` must drop these.
    if _is_hvm_item(item):
        item.add_marker(pytest.mark.hvm)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    hvm = [i for i, item in enumerate(items) if _is_hvm_item(item)]
    if not hvm or hardware_virtualization():
        _select_inner(config, items)
        if os.environ.get(INNER_ENV):
            _costliest_first(items)
        return  # run here
    if os.environ.get(INNER_ENV):
        # Inside the test host without hardware-assisted KVM: fail, never recurse or pass.
        for i in hvm:
            items[i] = _FailingItem.from_parent(items[i].parent, name=items[i].name, original=items[i], runner=None)
        return
    if qemu_path() is None:
        skip = pytest.mark.skip(reason="needs hardware-assisted KVM or qemu-system-x86_64 for the HVM test host "
                                       "(run scripts/setup-testhost.sh)")
        for i in hvm:
            items[i].add_marker(skip)
        return
    runner = _InnerRun(config, [items[i].nodeid for i in hvm])
    config.stash[_RUNNER] = runner
    for i in hvm:
        items[i] = _RemoteItem.from_parent(items[i].parent, name=items[i].name, original=items[i], runner=runner)
        if config.pluginmanager.hasplugin("timeout"):
            # The first item waits for the whole inner session, which has its own timeout.
            items[i].add_marker(pytest.mark.timeout(0))
    if runner.background and len(hvm) < len(items):
        # The test host runs while the other tests do (it uses about one of the CPUs): its
        # items go last, to wait for it as little as possible.
        remote = [items[i] for i in hvm]
        items[:] = [item for item in items if not isinstance(item, _RemoteItem)] + remote


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None and runner.background and not session.config.option.collectonly:
        runner.start()


def pytest_sessionfinish(session):
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.cancel()  # a session stopped early (-x, Ctrl-C) must not leave the machine running


def _select_inner(config, items):
    """Inside the test host: keep only the node ids the outer session selected. The outer
    passes files, not node ids, so that a file that fails to import inside (being edited
    right now, say) fails alone instead of aborting the whole inner session."""
    select = os.environ.get(SELECT_ENV)
    if not select:
        return
    wanted = set(Path(select).read_text().splitlines())
    deselected = [item for item in items if item.nodeid not in wanted]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.nodeid in wanted]


def _costliest_first(items):
    """Inside the test host: the files that take longest first (a module's ``TCG_SECONDS``,
    measured), so that the xdist workers, which take whole files in this order, end together."""
    def cost(item):
        module = getattr(item, "module", None)
        return -getattr(module, "TCG_SECONDS", 0) if _is_hvm_item(item) else 0
    items.sort(key=cost)  # stable: a file's tests keep their order


_RUNNER = pytest.StashKey()


class _InnerRun:
    """The one inner pytest session in the test host: a process of its own
    (:class:`xvm.testhost.job.JobProcess`) started by the first remote item (or, in the
    background, with the session's test loop), whose outcomes every remote item reads."""

    def __init__(self, config, nodeids):
        self.config = config
        self.nodeids = nodeids
        self.outcomes = None
        self.error = None
        self.result = None
        self.results_dir = None
        self.wall = None
        self.first_failure = None  # node id of the item that reported self.error in full
        self.host = None
        self.job = None
        self._started_at = None
        # In the background only with XVM_HVM_BACKGROUND=1, never with its console streamed to
        # the terminal (it would mix with the other tests' output).  Nothing of the machine lives
        # in this process meanwhile (no thread, no descriptor the tests that count theirs,
        # no_leaks, could see): it is started before the first test and read after.  It runs at
        # the lowest priority (BACKGROUND_NICE): it takes the CPU time the other tests leave
        # (about half of two CPUs: they wait on guests and processes), and the timing-sensitive
        # ones among them are not slowed.  Not the default: starved for long stretches, the
        # test host's own kernel reported a soft lockup (retried; seen once in six runs).
        self.background = os.environ.get("XVM_HVM_BACKGROUND") == "1" and not self._stream_wanted()

    def start(self):
        """Start the inner session (the first remote item waits for it)."""
        if self._started_at is None:
            self._started_at = time.monotonic()
            self._guarded(self._launch)

    def cancel(self):
        """The session ends before any remote item asked (-x, Ctrl-C): the machine must not outlive it."""
        if self.job is not None and self.wall is None:
            self.job.cancel()
            self.error = TestHostCancelled("the session ended first")
            self.wall = time.monotonic() - self._started_at

    def outcome_of(self, nodeid):
        if self.wall is None:
            stream = sys.stderr if self.job is None and self._stream_wanted() else None
            capman = self.config.pluginmanager.getplugin("capturemanager") if stream else None
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                self.start()
                if self.error is None:
                    self._guarded(self._finish)
            self.wall = time.monotonic() - self._started_at
        if self.error is not None:
            return None
        return self.outcomes.get(junit_key(nodeid))

    def error_text(self, nodeid):
        """The start failure as one item's error: in full for the first, then in short."""
        if self.first_failure in (None, nodeid):
            self.first_failure = nodeid
            return f"HVM test host: {self.error}"
        first_line = str(self.error).split("\n", 1)[0]
        return f"HVM test host: {first_line} (in full at {self.first_failure})"

    def _stream_wanted(self):
        opt = self.config.option
        return (os.environ.get("XVM_HVM_STREAM") == "1" or getattr(opt, "capture", "") == "no"
                or getattr(opt, "verbose", 0) >= 2)

    def _guarded(self, step):
        try:
            step()
        except TestHostError as e:
            self.error = e
        except Exception as e:  # whatever stops the start, each test reports it; none goes unreported
            self.error = TestHostError(f"could not start: {type(e).__name__}: {e}")

    def _launch(self):
        stream = None if self.background else (sys.stderr if self._stream_wanted() else None)
        self.host = TestHost(stall_timeout=self._stall_timeout())  # its settings checked here; the job runs it
        self.results_dir = Path(tempfile.mkdtemp(prefix="xvm-hvm-"))
        if stream:
            stream.write(f"\n[xvm hvm] booting the HVM test host for {len(self.nodeids)} test(s)\n")
            stream.flush()
        select = self.results_dir / "selected-nodeids"
        select.write_text("".join(f"{nodeid}\n" for nodeid in self.nodeids))
        # Entry-point plugin discovery reads every dist-info over 9p: ~45 s under TCG.
        env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", SELECT_ENV: str(select)}
        self.job = JobProcess(self._command(self.results_dir / "junit.xml"), timeout=self._timeout(),
                              cwd=self._rootdir(), env=env, results_dir=self.results_dir,
                              host={"stall_timeout": self.host.stall_timeout}, stream=stream,
                              nice=BACKGROUND_NICE if self.background else 0)
        self.job.start()

    def _finish(self):
        junit = self.results_dir / "junit.xml"
        self.result = self.job.wait()  # NotPreparedError names scripts/setup-testhost.sh
        (self.results_dir / "output.log").write_text(self.result.output)
        if not junit.exists():
            raise TestHostError(f"the inner pytest wrote no {junit.name} (exit status "
                                f"{self.result.exit_status}); its output ends:\n" + _tail(self.result.output))
        self.outcomes = read_junit(junit)

    def _rootdir(self):
        return Path(str(self.config.rootpath))

    def _timeout(self):
        return _seconds("XVM_HVM_TIMEOUT", 600 + 120 * len(self.nodeids))

    def _stall_timeout(self):
        return _seconds("XVM_HVM_STALL_TIMEOUT", DEFAULT_STALL_TIMEOUT)

    def _command(self, junit):
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", PROGRESS_PLUGIN, "-q", "-rfEs",
                   "--continue-on-collection-errors", "-o", "junit_family=xunit1",
                   f"--rootdir={self._rootdir()}", f"--junitxml={junit}"]
        if self.config.inipath:
            command += ["-c", str(self.config.inipath)]
        if self.config.pluginmanager.hasplugin("timeout"):
            command += ["-p", "pytest_timeout"]  # per-test timeouts inside too
        for plugin in os.environ.get("XVM_HVM_PLUGINS", "").split(","):
            if plugin.strip():
                command += ["-p", plugin.strip()]
        files = dict.fromkeys(nodeid.split("::", 1)[0] for nodeid in self.nodeids)
        workers = self._workers(len(files))
        if workers > 1:  # a file's tests stay together: they share networks, addresses, pools
            command += ["-p", "xdist", "-n", str(workers), "--dist", "loadfile"]
        return command + list(files)

    def _workers(self, files):
        """How many pytest-xdist workers the inner run gets: XVM_HVM_WORKERS, else one per
        CPU of the test host (each test keeps about one of its vCPUs busy); never more than
        there are files, 1 without pytest-xdist."""
        try:
            import xdist  # noqa: F401
        except ImportError:
            return 1
        wanted = os.environ.get("XVM_HVM_WORKERS")
        if wanted:
            try:
                return max(1, int(wanted))
            except ValueError:
                raise TestHostConfigError(f"XVM_HVM_WORKERS={wanted!r} is not a number of workers") from None
        return max(1, min(self.host.smp, files))

    def summary(self):
        if self.wall is None:
            return None
        if isinstance(self.error, TestHostCancelled):
            return f"HVM test host: cancelled after {self.wall:.1f} s (the session ended first)"
        if self.error is not None or self.result is None:
            where = f" (results in {self.results_dir})" if self.results_dir else ""
            first_line = str(self.error).split("\n", 1)[0] if self.error is not None else "no result"
            return f"HVM test host: FAILED after {self.wall:.1f} s{where}: {first_line}"
        boot = f"{self.result.boot_time:.1f}" if self.result.boot_time is not None else "?"
        return (f"HVM test host: {len(self.nodeids)} test(s) in {self.wall:.1f} s (TCG machine ready in {boot} s, "
                f"attempt {self.result.attempts}, inner exit {self.result.exit_status}); "
                f"console and junit in {self.results_dir}")


class _RemoteFailure(Exception):
    pass


class _RemoteItem(pytest.Item):
    """Stands in for a tests/hvm item on a machine without hardware virtualization: reports
    the outcome the same node id had inside the test host."""

    def __init__(self, *, original, runner, **kwargs):
        super().__init__(**kwargs)
        self.original = original
        self.runner = runner
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)

    def reportinfo(self):
        return self.original.reportinfo()

    def runtest(self):
        outcome = self.runner.outcome_of(self.nodeid)
        if self.runner.error is not None:
            raise _RemoteFailure(self.runner.error_text(self.nodeid))
        if outcome is None:
            path = self.nodeid.split("::", 1)[0]
            collect_error = self.runner.outcomes.get(junit_key(path))
            if collect_error is not None:
                raise _RemoteFailure(f"[in the HVM test host] collecting {path} failed:\n{collect_error.text}")
            raise _RemoteFailure("the test host's pytest reported no result for this test; its output ends:\n"
                                 + _tail(self.runner.result.output))
        self.user_properties.extend(outcome.properties)
        self.user_properties.append(("hvm_inner_duration_s", outcome.time))
        if outcome.outcome == "passed":
            return
        if outcome.outcome == "skipped":
            try:  # report the test's own location, not this file's
                raise pytest.skip.Exception(_skip_reason(outcome), _use_item_location=True)
            except TypeError:
                pytest.skip(_skip_reason(outcome))
        if outcome.outcome == "xfailed":
            pytest.xfail(_skip_reason(outcome))
        raise _RemoteFailure(f"[in the HVM test host] {outcome.message}\n\n{outcome.text}".rstrip())

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, _RemoteFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class _FailingItem(_RemoteItem):
    def runtest(self):
        raise _RemoteFailure("inside the HVM test host but /dev/kvm is not hardware-assisted (did kvm_amd load?)")


def _skip_reason(outcome):
    return outcome.message or outcome.text.strip() or "skipped in the HVM test host"


def _seconds(variable, default) -> float:
    value = os.environ.get(variable)
    if not value:
        return float(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise TestHostConfigError(f"{variable}={value!r}: expected a positive number of seconds")
    return seconds


def _tail(text, lines=40):
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def pytest_report_header(config):
    if hardware_virtualization():
        return "hvm: hardware-assisted KVM here; tests/hvm run directly"
    if os.environ.get(INNER_ENV):
        return "hvm: inside the HVM test host WITHOUT hardware-assisted KVM"
    return "hvm: no VT-x/AMD-V here; tests/hvm run inside the HVM test host (QEMU TCG, booted once)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    runner = config.stash.get(_RUNNER, None)
    try:
        line = runner.summary() if runner else None
    except Exception as e:  # the summary must never take pytest's own report down with it
        line = f"HVM test host: no summary ({type(e).__name__}: {e})"
    if line:
        terminalreporter.write_line(line)


# --- fixtures for tests that run with hardware-assisted KVM -------------------------------------


@pytest.fixture
def host(inprocess_host):
    """Inside the TCG test host a Python process start costs seconds: these tests, about
    unmodified Linux guests rather than the control plane, run their VMMs in-process."""
    return inprocess_host


@pytest.fixture(scope="session")
def guest_kernel():
    """The cached, unmodified Debian cloud kernel (bzImage, vmlinux) -- NotPreparedError names
    the setup command if it is missing."""
    return cloud_kernel(vmlinux=True)


@pytest.fixture(scope="session")
def guest_initramfs():
    """A tiny busybox initramfs whose init prints NESTED_MARKER and powers off."""
    return nested_initramfs()


@pytest.fixture(scope="session")
def nested_marker():
    return NESTED_MARKER

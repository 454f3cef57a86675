"""Shared fixtures: test guests built on demand, a Host, and a leak check."""
import compileall
import importlib.util
import os
import pathlib
import shutil
import tempfile
import threading
import warnings

import pytest

from procs import kill_processes_of

TESTS = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("xvm_test_guests", TESTS / "guests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)


def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _compile_package():
    """Byte-compile the checkout's xvm package (what is not compiled already): the suite starts
    hundreds of Python processes -- a VMM per domain, the CLI, xvmd, the test host's inner
    pytest reading this checkout over 9p under emulation -- and where PYTHONDONTWRITEBYTECODE
    is set (as on these machines) each would compile every module it imports again.  They read
    the cached bytecode even so.  Nothing is written where the checkout is read-only (inside
    the test host)."""
    package = TESTS.parent / "xvm"
    if os.access(package, os.W_OK):
        compileall.compile_dir(str(package), quiet=2)


def pytest_configure(config):
    # Every host the tests open (and every process they start) uses a state directory
    # of this run, never the machine's own /var/lib/xvm.  Short: socket paths must fit
    # in 108 bytes.
    os.environ["XVM_STATE_DIR"] = tempfile.mkdtemp(prefix="xvm-tests-", dir="/tmp")
    if not hasattr(config, "workerinput"):  # pytest-xdist: the controller has done it
        _compile_package()


def pytest_collection_modifyitems(config, items):
    skip_kvm = pytest.mark.skip(reason="needs read/write access to /dev/kvm")
    for item in items:
        if TESTS / "kvm" in pathlib.Path(item.fspath).parents:
            item.add_marker(pytest.mark.kvm)
        if "kvm" in item.keywords and not kvm_usable():
            item.add_marker(skip_kvm)


@pytest.fixture(scope="session")
def guest():
    """``guest("hello")`` -> path of the built test guest image."""
    return lambda name: str(guest_build.build(name))


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_leaks():
    """Fail the test if it leaves threads or file descriptors behind."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    yield
    for _ in range(50):  # watcher threads may take a moment to return
        extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not extra_threads:
            break
        threading.Event().wait(0.05)
    assert not extra_threads, f"threads left behind: {extra_threads}"
    leaked = {fd: _describe(fd) for fd in _open_fds() - fds_before}
    leaked = {fd: what for fd, what in leaked.items() if what is not None}
    assert not leaked, f"file descriptors left behind: {leaked}"


def _describe(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # the fd used by listdir itself


@pytest.fixture
def state_dir(monkeypatch):
    """A state directory of this test's own (also set as $XVM_STATE_DIR)."""
    path = tempfile.mkdtemp(prefix="xvm-", dir="/tmp")
    monkeypatch.setenv("XVM_STATE_DIR", path)
    yield path
    left = kill_processes_of(path)
    if left:  # the test's own teardown did not stop them: they would run on, orphaned, all session
        warnings.warn(f"state directory {path}: killed {len(left)} VMM or xvmd process(es) still serving it: {left}")
    shutil.rmtree(path, ignore_errors=True)


def destroy_all(host):
    """Destroy every domain of ``host`` that is still running (test teardown)."""
    import xvm

    for dom in host.domains():
        try:
            if dom.state is not xvm.DomainState.SHUTOFF:
                dom.destroy()
        except xvm.XvmError:
            pass


@pytest.fixture
def host(state_dir):
    """The embedded host of a fresh state directory; its domains are destroyed afterwards."""
    import xvm

    h = xvm.connect()
    yield h
    destroy_all(h)
    h.close()


def start_xvmd(state, socket_path, *extra, env=None):
    """Start ``xvmd`` on ``state``/``socket_path``; returns the Popen once it serves."""
    import subprocess
    import sys
    import time

    root = str(TESTS.parent)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = root
    log_path = os.path.join(state, "xvmd.log")
    with open(log_path, "ab") as log:  # no pipe: the test process keeps no descriptor of it
        proc = subprocess.Popen([sys.executable, "-m", "xvm.daemon", "--state-dir", state,
                                 "--socket", socket_path, *extra], env=env, cwd=root,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _serving(socket_path):  # a stale socket file of a killed xvmd may be there
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"xvmd did not start: {f.read()[-2000:]}")
        time.sleep(0.02)
    return proc


@pytest.fixture
def inprocess_host(state_dir):
    """An embedded host whose VMMs run in this process (device internals reachable
    through ``dom.machine``, e.g. device metrics after the guest powered off)."""
    import xvm

    h = xvm.connect(in_process=True)
    yield h
    destroy_all(h)
    h.close()


def _serving(path):
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


@pytest.fixture(scope="session")
def xvmd():
    """An xvmd of this test session: ``(uri, state_dir, socket_path, process)``."""
    state = tempfile.mkdtemp(prefix="xvmd-", dir="/tmp")
    sock = os.path.join(state, "xvmd.sock")
    proc = start_xvmd(state, sock)
    yield f"xvm+unix://{sock}", state, sock, proc
    proc.terminate()
    proc.wait(10)
    import xvm

    with xvm.connect(state_dir=state) as h:  # whatever a failed test left running
        destroy_all(h)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["session", "xvmd"])
def any_host(request, state_dir):
    """The same tests against the embedded host and against xvmd."""
    import xvm

    if request.param == "session":
        h = xvm.connect()
    else:
        h = xvm.connect(request.getfixturevalue("xvmd")[0])
    yield h
    destroy_all(h)
    for dom in h.domains():
        try:
            dom.undefine()
        except xvm.XvmError:
            pass
    h.close()


@pytest.fixture(scope="session")
def xvmd_starter():
    """``start(state, socket_path, *args)`` -> the Popen of a serving xvmd."""
    return start_xvmd


@pytest.fixture(scope="session")
def destroyer():
    """``destroy(host)``: destroy every running domain of ``host``."""
    return destroy_all

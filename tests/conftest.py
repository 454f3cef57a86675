"""Shared fixtures: test guests built on demand, a Host, and a leak check."""
import importlib.util
import os
import pathlib
import threading

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("xvm_test_guests", TESTS / "guests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)


def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


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
def host():
    import xvm

    h = xvm.connect()
    yield h
    h.close()

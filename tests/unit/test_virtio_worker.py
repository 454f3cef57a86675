"""The epoll worker: eventfd dispatch, error isolation, clean stop."""
import os
import threading

import pytest

from xvm.devices.virtio.worker import Worker


def test_dispatch_errors_and_stop():
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    calls = []
    errors = []
    done = threading.Event()

    def good():
        calls.append(threading.current_thread().name)
        done.set()

    def bad():
        raise RuntimeError("guest broke something")

    worker = Worker(name="test-worker", on_error=errors.append)
    worker.add_eventfd(fds[0], good)
    worker.add_eventfd(fds[1], bad)
    worker.start()
    try:
        os.eventfd_write(fds[1], 1)
        os.eventfd_write(fds[0], 3)  # coalesced: one call, counter drained
        assert done.wait(5)
        assert calls == ["test-worker"]
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        with pytest.raises(RuntimeError):
            worker.add(fds[0], lambda events: None)  # no registration while running
    finally:
        worker.stop()
        worker.stop()  # idempotent
    assert not worker.running
    with pytest.raises(BlockingIOError):
        os.eventfd_read(fds[0])  # drained by the worker
    for fd in fds:
        os.close(fd)


def test_stop_from_a_handler():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    worker = Worker()
    worker.add_eventfd(fd, lambda: worker.stop())
    worker.start()
    thread = worker._thread
    os.eventfd_write(fd, 1)
    thread.join(5)
    assert not thread.is_alive()
    os.close(fd)
    assert worker._thread is None and worker._stop_fd == -1  # cleaned up by itself


def test_stop_never_raises_and_abandons_a_hung_handler():
    """A handler stuck in a backend call: stop() gives up after its timeout
    without raising; the loop ends by itself once the call returns."""
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    entered, release = threading.Event(), threading.Event()

    def hung():
        entered.set()
        release.wait(10)

    worker = Worker(name="hung-worker")
    worker.add_eventfd(fd, hung)
    worker.start()
    thread = worker._thread
    os.eventfd_write(fd, 1)
    assert entered.wait(5)
    assert worker.stop(timeout=0.05) is False
    assert worker.abandoned and worker.stop_requested
    release.set()
    thread.join(5)
    assert not thread.is_alive() and not worker.running
    assert worker._stop_fd == -1  # cleaned up by itself
    assert worker.stop() is True
    os.close(fd)


def test_guest_errors_one_line_vmm_bugs_keep_traceback(caplog):
    import logging
    from xvm.devices.virtio.errors import QueueError
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    errors = []
    done = threading.Event()

    def guest():
        raise QueueError("test: avail ring corrupt (§2.7.6)")

    def bug():
        raise KeyError("vmm bug")

    worker = Worker(name="err-worker", on_error=lambda e: (errors.append(e), done.set()))
    worker.add_eventfd(fds[0], guest)
    worker.add_eventfd(fds[1], bug)
    caplog.set_level(logging.DEBUG, logger="xvm")
    worker.start()
    try:
        os.eventfd_write(fds[0], 1)
        assert done.wait(5)
        done.clear()
        os.eventfd_write(fds[1], 1)
        while len(errors) < 2:
            assert done.wait(5)
    finally:
        worker.stop()
    guest_rec, bug_rec = [r for r in caplog.records if r.name.startswith("xvm")]
    assert "avail ring corrupt" in guest_rec.getMessage() and guest_rec.exc_info is None
    assert bug_rec.levelname == "ERROR" and bug_rec.exc_info is not None
    for fd in fds:
        os.close(fd)


def test_rate_limited_log_bursts_then_summarises(caplog):
    import logging
    from xvm.devices.virtio.guestlog import RateLimitedLog
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("xvm.test"), "dev0", burst=3, interval=1.0,
                             clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="xvm")
    for i in range(100):
        limited.emit(logging.WARNING, "error %d", i)
    assert [r.getMessage() for r in caplog.records] == [
        "dev0: error 0", "dev0: error 1", "dev0: error 2"]
    now[0] = 1.5  # a new window: the summary comes first
    limited.emit(logging.WARNING, "error %d", 100)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "dev0: 97 more suppressed", "dev0: error 100"]
    limited.flush()
    assert len(caplog.records) == 5  # nothing was suppressed since

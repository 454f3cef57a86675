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

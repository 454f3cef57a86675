"""The data-plane worker: one thread waiting on epoll for eventfds.

Queue notifications arrive as eventfd wake-ups (a KVM ioeventfd, or the
transport writing the same eventfd when a QueueNotify write reaches the bus);
the worker drains the eventfd and calls the handler.  Control work (resets,
register accesses) stays on the vCPU thread; :meth:`Worker.stop` is how it
takes the queues back.
"""
import logging
import os
import select
import threading

log = logging.getLogger(__name__)


def drain_eventfd(fd):
    """Consume an eventfd's counter; 0 if nothing was pending."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class Worker:
    """An epoll loop on its own thread.

    ``add_eventfd(fd, callback)`` drains ``fd`` and calls ``callback()`` when it
    fires; ``add(fd, callback, events)`` calls ``callback(events)`` for any
    other fd (the callback does its own reading).  A callback that raises is
    reported to ``on_error(exc)`` and the loop goes on.  Registration is only
    allowed before :meth:`start`.  ``stop()`` wakes the loop through its own
    eventfd and joins the thread; it is idempotent.
    """

    def __init__(self, name="virtio-worker", on_error=None):
        self.name = name
        self.on_error = on_error
        self._handlers = {}
        self._thread = None
        self._epoll = None
        self._stop_fd = -1
        self._self_stop = False

    def add_eventfd(self, fd, callback):
        def on_ready(events, fd=fd, callback=callback):
            if drain_eventfd(fd):
                callback()
        self.add(fd, on_ready, select.EPOLLIN)

    def add(self, fd, callback, events=select.EPOLLIN):
        if self._thread is not None:
            raise RuntimeError("cannot register an fd on a running worker")
        self._handlers[fd] = (callback, events)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._epoll = select.epoll()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._stop_fd, select.EPOLLIN)
        for fd, (_, events) in self._handlers.items():
            self._epoll.register(fd, events)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout=10.0):
        """Stop the loop and wait for it; the handler running now completes first."""
        thread = self._thread
        if thread is None:
            return
        os.eventfd_write(self._stop_fd, 1)
        if thread is threading.current_thread():
            # Asked from a handler: the loop ends when the handler returns and
            # cleans up after itself.
            self._self_stop = True
            return
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"worker {self.name} did not stop within {timeout}s")
        self._epoll.close()
        os.close(self._stop_fd)
        self._epoll = None
        self._stop_fd = -1
        self._thread = None

    def _run(self):
        try:
            self._loop()
        finally:
            if self._self_stop:
                self._epoll.close()
                os.close(self._stop_fd)
                self._epoll = None
                self._stop_fd = -1
                self._thread = None
                self._self_stop = False

    def _loop(self):
        epoll = self._epoll
        stop_fd = self._stop_fd
        handlers = self._handlers
        while True:
            try:
                ready = epoll.poll()
            except InterruptedError:
                continue
            for fd, events in ready:
                if fd == stop_fd:
                    return
            for fd, events in ready:
                callback, _ = handlers[fd]
                try:
                    callback(events)
                except Exception as exc:  # a guest-caused fault must not kill the loop
                    log.exception("%s: handler for fd %d failed", self.name, fd)
                    if self.on_error is not None:
                        try:
                            self.on_error(exc)
                        except Exception:
                            log.exception("%s: on_error failed", self.name)

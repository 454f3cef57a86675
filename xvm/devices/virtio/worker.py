"""The data-plane worker: one thread waiting on epoll for eventfds.

Queue notifications arrive as eventfd wake-ups (a KVM ioeventfd, or the
transport writing the same eventfd when a QueueNotify write reaches the bus);
the worker drains the eventfd and calls the handler.  Control work (resets,
register accesses) stays on the vCPU thread; :meth:`Worker.stop` is how it
takes the queues back.

Handlers are bounded (one batch of a queue, see :mod:`.batch`) and check
:attr:`Worker.stop_requested` (C code: :attr:`Worker.stop_flag`) as they go, so a
stop waits for one request, however busy the guest keeps its queues.  The worker
thread takes no lock of its callers: a caller may stop it while holding its own.
"""
import logging
import os
import select
import threading

from ...errors import GuestError
from . import native as _native_loader
from .guestlog import RateLimitedLog

log = logging.getLogger(__name__)

# How long stop() waits for the handler in hand.  A handler waits for at most one
# backend call, so only a hung host (a stuck disk) gets near this.
STOP_TIMEOUT = 1.0


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
    allowed before :meth:`start`.

    :meth:`request_stop` asks the loop to end after the handler in hand and
    returns at once; :meth:`stop` also waits for it (bounded, never raising);
    both are idempotent.  The thread releases its epoll and stop eventfd itself
    when its loop ends.
    """

    def __init__(self, name="virtio-worker", on_error=None):
        self.name = name
        self.on_error = on_error
        self._handlers = {}
        self._thread = None
        self._epoll = None
        self._stop_fd = -1
        self._fd_lock = threading.Lock()  # the stop eventfd against its closing
        self.stop_requested = False
        # The same request for C code serving a turn with the GIL released: a C int set
        # with stop_requested (None without the C module).
        module = _native_loader.load()
        self.stop_flag = module.ffi.new("int *") if module is not None else None
        self.abandoned = False  # stop() gave up waiting: the loop must touch nothing
        self._error_log = RateLimitedLog(log, name)

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
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self):
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self.stop_requested = self.abandoned = False
        if self.stop_flag is not None:
            self.stop_flag[0] = 0
        self._epoll = select.epoll()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._stop_fd, select.EPOLLIN)
        for fd, (_, events) in self._handlers.items():
            self._epoll.register(fd, events)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self):
        """Ask the loop to end once the handler in hand returns; does not wait."""
        self.stop_requested = True
        if self.stop_flag is not None:
            self.stop_flag[0] = 1
        with self._fd_lock:
            if self._stop_fd >= 0:
                os.eventfd_write(self._stop_fd, 1)

    def stop(self, timeout=None):
        """Stop the loop and wait at most ``timeout`` seconds (default
        :data:`STOP_TIMEOUT`) for it; True if it ended.  Asked from a handler,
        the loop ends when the handler returns.  A loop still busy after
        ``timeout`` (a backend call that hangs) is abandoned (:attr:`abandoned`):
        it ends by itself, and queue service writes nothing more to the rings
        (:mod:`.batch`)."""
        thread = self._thread
        if thread is None:
            return True
        self.request_stop()
        if thread is threading.current_thread():
            return True
        if timeout is None:
            timeout = STOP_TIMEOUT
        thread.join(timeout)
        if thread.is_alive():
            self.abandoned = True
            log.warning("%s: worker still busy after %.1fs; left to finish alone",
                        self.name, timeout)
            return False
        return True

    def _run(self):
        try:
            self._loop()
        finally:
            with self._fd_lock:
                self._epoll.close()
                os.close(self._stop_fd)
                self._epoll = None
                self._stop_fd = -1
            self._error_log.flush()
            self._thread = None

    def _loop(self):
        epoll = self._epoll
        handlers = self._handlers
        while not self.stop_requested:
            try:
                ready = epoll.poll()
            except InterruptedError:
                continue
            for fd, events in ready:
                if self.stop_requested:
                    return
                entry = handlers.get(fd)
                if entry is None:
                    continue  # the stop eventfd
                try:
                    entry[0](events)
                except Exception as exc:  # a fault must not kill the loop
                    self._report(fd, exc)

    def _report(self, fd, exc):
        if isinstance(exc, GuestError):
            # Guest faults are normally handled below us; one line, no traceback.
            self._error_log.emit(logging.WARNING, "guest error: %s", exc)
        else:
            self._error_log.emit(logging.ERROR, "handler for fd %d failed (VMM bug)", fd,
                                 exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("%s: on_error failed", self.name)

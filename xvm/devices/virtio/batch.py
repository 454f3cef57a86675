"""One bounded turn of queue service: the serve-then-notify loop of every device.

The transport's worker calls :func:`serve_queue` for each wake-up of a queue
(its notification eventfd, or a device event source such as a readable TAP).
Devices only say what one request means
(:meth:`~.device.VirtioDevice.process_chain`) or, for work that is not one
chain at a time (virtio-net receive), what one turn does
(:meth:`~.device.VirtioDevice.process_queue`); this module owns the rest:

* the batch is bounded (at most Queue Size chains, and a stop check before
  each one), so a guest that keeps its queue full cannot hold the worker:
  a reset, QueueReady=0 or pause waits for one request, not for the guest to
  stop;
* work left over when the budget runs out or a stop is requested is reported
  as :attr:`Batch.more`; the transport re-arms the queue's eventfd so the
  next turn (or the next worker, after a resume) picks it up;
* a malformed chain fails alone (§2.7.8) and a corrupt ring marks the device
  broken (the transport then sets DEVICE_NEEDS_RESET, §2.1.2); both are
  guest errors: counted, logged as one rate-limited line;
* the used buffer notification (§2.7.7) is sent once per turn, naming the
  queue, if the driver wants it.
"""
from .device import InterruptKind
from .errors import ChainError, QueueError


def _never():
    return False


class Batch:
    """The budget and the stop check of one turn on queue ``index``.

    ``stop()`` returns True once the worker has been asked to stop;
    ``abandoned()`` once its stopper gave up waiting (a hung backend call): the
    turn must then complete nothing more.  ``budget`` is how many chains (or
    frames) the turn may take, Queue Size by default.  ``stop_flag`` is the same
    stop request as a C ``int *`` (the worker's :attr:`~.worker.Worker.stop_flag`),
    for request paths that run a whole turn in C; None if there is none.
    """

    __slots__ = ("device", "index", "queue", "budget", "more", "notified_used", "stop_flag",
                 "_stop", "_abandoned")

    def __init__(self, device, index, queue, *, budget=None, stop=_never, abandoned=_never,
                 stop_flag=None):
        self.device = device
        self.index = index
        self.queue = queue
        self.budget = queue.size if budget is None else budget
        self.more = False
        self.notified_used = queue.next_used  # used.idx at the last notification (or start)
        self.stop_flag = stop_flag
        self._stop = stop
        self._abandoned = abandoned

    @property
    def stops_in_c(self):
        """Whether C code serving this turn sees its stop requests: it has
        :attr:`stop_flag`, or it has no stop at all."""
        return self.stop_flag is not None or self._stop is _never

    def owns_queue(self):
        """False once a reset or QueueReady=0 took the queue away, or the turn was
        abandoned: nothing more may be written to its ring."""
        return not (self._abandoned() or self.device.queues_dropped(self.index, self.queue))

    @property
    def stopping(self):
        return self._stop()

    def take(self):
        """Claim one unit of the budget; False (and :attr:`more` set) when the
        budget is spent or a stop was requested: the caller returns."""
        if self.budget <= 0 or self._stop():
            self.more = True
            return False
        self.budget -= 1
        return True

    def serve_chains(self, handle):
        """Pop available chains and complete each with ``handle(chain)``'s used
        length, within the budget.  A malformed chain is returned unused and
        reported; a corrupt ring raises :class:`QueueError`.  Notifications are
        re-enabled before the queue is left empty, so no chain is missed
        (§2.7.10)."""
        queue = self.queue
        device = self.device
        while True:
            while self.take():
                try:
                    chain = queue.pop()
                except ChainError as e:
                    if e.head is None:
                        raise
                    # §2.7.8: the device returns the chain; used length 0 says nothing
                    # was written.  The request fails alone.
                    device.invalid_chain(self.index, e)
                    queue.add_used(e.head, 0)
                    continue
                if chain is None:
                    self.budget += 1
                    break
                used = handle(chain)
                if self._stop() and not self.owns_queue():
                    return  # the ring is not ours any more
                queue.add_used(chain.head, used)
            else:
                return
            if not queue.enable_notification():
                return


    def serve_heads(self, handle):
        """Like :meth:`serve_chains`, but ``handle(head)`` gets the ring entry
        unwalked (a C request path walks it itself); it raises
        :class:`ChainError` for a malformed chain, as :meth:`.queue.Queue.walk`
        does, and returns the used length."""
        queue = self.queue
        device = self.device
        while True:
            while self.take():
                head = queue.pop_head()
                if head is None:
                    self.budget += 1
                    break
                try:
                    used = handle(head)
                except ChainError as e:
                    if e.head is None:
                        raise
                    # §2.7.8: returned unused, the request fails alone.
                    device.invalid_chain(self.index, e)
                    queue.add_used(e.head, 0)
                    continue
                if self._stop() and not self.owns_queue():
                    return  # the ring is not ours any more
                queue.add_used(head, used)
            else:
                return
            if not queue.enable_notification():
                return

    def serve_in_flight(self, engine):
        """Serve the queue through ``engine``, which keeps several requests in
        flight (a C path with an I/O pool): ``engine.start(head)`` returns
        ``("done", used)``, ``("started", None)``, ``("python", None)`` (drain,
        then ``engine.reference(head)``) or ``("conflict", None)`` (drain, then
        start again); ``engine.reap(wait)`` returns finished ``(head, used)``
        pairs, ``used`` None when the C path failed it (then
        ``engine.reference(head)``); ``engine.reference(head)`` returns the used
        length or the :class:`ChainError` of a malformed chain;
        ``engine.inflight`` and ``engine.width`` bound it.  Completions go to the
        used ring as they come (§2.7.8: in any order) with a notification after
        each reaping; the budget and stop check count heads as
        :meth:`serve_heads` does, and nothing popped is left in flight when this
        returns (a pause or reset waits for what is in flight).

        An engine with ``turn`` (not None) serves whole stretches of the turn in
        one call: ``engine.turn(batch)`` pops, starts, completes and returns
        requests on the used ring itself, re-enables notifications and decides
        on the used buffer notification, advancing the queue's indexes, the
        budget and :attr:`notified_used`; it returns ``(event, head, done,
        notify)``: ``done`` finished ``(head, used)`` pairs it left to us (a
        stop, a failed I/O), ``notify`` whether to send the notification now,
        and ``event`` one of ``"idle"`` (nothing left: the turn is over),
        ``"budget"`` (spent), ``"stop"``, ``"again"`` (call again), ``"ring"``
        (avail.idx is too far ahead: :meth:`.queue.Queue.pending` raises), or
        ``"python"``, ``"conflict"``, ``"failed"`` for ``head``, popped and
        ours to serve as above.  It is used while the C side sees the stop
        requests (:attr:`stops_in_c`) and no live migration tracks device
        writes (:meth:`.queue.Queue.add_used` records them)."""
        queue = self.queue
        event = None
        turn = engine.turn if self.stops_in_c else None
        if turn is not None and queue.memory.device_dirty is None:
            event = turn(self)
            if event[0] == "idle" and not event[2]:  # all of it done in C: the common case
                if event[3] and self.owns_queue():
                    self._send_notification()
                return
        owned = True

        def complete(head, used):
            if not owned:
                return
            if used is None:
                used = engine.reference(head)
            if isinstance(used, ChainError):
                if used.head is None:
                    raise used
                # §2.7.8: returned unused, the request fails alone.
                self.device.invalid_chain(self.index, used)
                used = 0
            queue.add_used(head, used)

        def drain():
            nonlocal owned
            while engine.inflight:
                for head, used in engine.reap(True):
                    complete(head, used)
                if self._stop() and not self.owns_queue():
                    owned = False  # the ring is not ours any more: finish, write nothing

        def serve(head, kind, used):
            if kind == "conflict":
                drain()
                kind, used = engine.start(head)
            if kind == "python":
                drain()
                used = engine.reference(head)
            if kind != "started":
                complete(head, used)

        try:
            while True:
                if event is None and turn is not None and queue.memory.device_dirty is None:
                    event = turn(self)
                if event is not None:
                    kind, head, done, notify = event
                    event = None
                    if done and self._stop() and not self.owns_queue():
                        owned = False  # the ring is not ours any more
                    for finished, used in done:
                        complete(finished, used)
                    if notify and owned and self.owns_queue():
                        self._send_notification()
                    if kind == "idle" or not owned:
                        return
                    if kind in ("budget", "stop"):
                        self.more = True
                        return
                    if kind == "ring":
                        queue.pending()  # raises the QueueError (§2.7.6)
                    elif kind in ("python", "conflict"):
                        serve(head, kind, None)
                    elif kind == "failed":
                        complete(head, None)
                    if not owned:
                        return
                    continue
                while engine.inflight < engine.width and self.take():
                    head = queue.pop_head()
                    if head is None:
                        self.budget += 1
                        break
                    serve(head, *engine.start(head))
                    if not owned:
                        return
                if engine.inflight:
                    for head, used in engine.reap(True):
                        complete(head, used)
                    if self._stop() and not self.owns_queue():
                        owned = False
                        return
                    self.notify()
                    continue
                if self.more or not queue.enable_notification():
                    return
        finally:
            drain()

    def notify(self):
        """Send the used buffer notification (§2.7.7) now if the driver wants one
        for what was used since the last."""
        queue = self.queue
        if queue.next_used != self.notified_used and self.owns_queue():
            self.notified_used = queue.next_used
            if queue.needs_notification():
                self._send_notification()

    def _send_notification(self):
        self.device.metrics.interrupt_count += 1
        self.device.interrupt.trigger(InterruptKind.USED_BUFFER, queue=self.index)


def serve_queue(device, index, work=None, *, stop=_never, abandoned=_never, budget=None,
                stop_flag=None):
    """Run one turn of ``work(index, batch)`` (default
    ``device.process_queue``) on ``device``'s queue ``index``; ``stop``,
    ``abandoned``, ``budget`` and ``stop_flag`` are the :class:`Batch`'s.

    Returns the :class:`Batch` (``more`` says work is left), or None if the
    queue is not live or the device is broken.  A corrupt ring is reported
    through :meth:`~.device.VirtioDevice.ring_error`, after which
    ``device.broken`` is True.  Any other exception is a VMM bug and
    propagates (the worker logs it with its traceback).
    """
    queues = device.queues
    queue = queues[index] if 0 <= index < len(queues) else None
    if queue is None or device.broken:
        return None
    batch = Batch(device, index, queue, budget=budget, stop=stop, abandoned=abandoned,
                  stop_flag=stop_flag)
    try:
        (work or device.process_queue)(index, batch)
    except QueueError as e:
        # A guest's fault, no traceback wanted (guestlog.py); kept, it would tie the
        # frames it passed (the device, views of guest RAM) in a cycle until a collection.
        device.ring_error(index, e.with_traceback(None))
    finally:
        batch.notify()
    return batch

"""A domain's serial console: a bounded log, input, and expect-style scripting.

The log survives reboots of the domain (like xenconsoled's): output is
appended as the guest writes it and the oldest bytes are dropped beyond
``limit``.  ``read()`` returns what arrived since the last ``read()``;
``expect()`` waits for a regular expression in what arrived since the last
match.
"""
import re
import threading
import time

from .errors import ConfigError, ConsoleTimeout, StateError

DEFAULT_LOG_LIMIT = 1 << 20
SETTLE = 0.05  # seconds a match at the end of the output waits for the rest of it


class Console:
    def __init__(self, limit=DEFAULT_LOG_LIMIT):
        self.limit = limit
        self._log = bytearray()
        self._base = 0  # absolute position of _log[0]
        self._read_pos = 0
        self._expect_pos = 0
        self._cond = threading.Condition()
        self._input = None  # callable taking bytes while the guest runs
        self._closed_reason = "the domain is not running"
        self._listeners = []  # callables (event, payload): ("data", bytes), ("open", None), ("closed", reason)

    # -- fed by the machine -------------------------------------------------
    def _feed(self, data):
        with self._cond:
            self._log += data
            excess = len(self._log) - self.limit
            if excess > 0:
                del self._log[:excess]
                self._base += excess
            self._cond.notify_all()
            self._tell("data", bytes(data))

    def _attach(self, input_sink):
        with self._cond:
            self._input = input_sink
            self._closed_reason = None
            self._cond.notify_all()
            self._tell("open", None)

    def _detach(self, reason):
        with self._cond:
            self._input = None
            self._closed_reason = reason
            self._cond.notify_all()
            self._tell("closed", reason)

    def _tell(self, event, payload):
        for listener in list(self._listeners):
            try:
                listener(event, payload)
            except Exception:  # a listener must not break the guest's output path
                self._listeners.remove(listener)

    def subscribe(self, listener, history=True, offset=None):
        """Call ``listener(event, payload)`` for every change: ``("data", bytes)``,
        ``("open", None)`` when input becomes possible, ``("closed", reason)`` when it stops.

        First, before this returns, the listener gets what is retained now (if
        ``history``) and the current input state, taken atomically with the
        subscription, so nothing is lost, seen twice or out of order.  ``offset``: replay
        from that position (:attr:`end` counts every byte this console ever got) instead of
        the oldest byte retained -- what a client that already has ``offset`` bytes asks
        for; past :attr:`end` it is a ConfigError.  Listeners run on the guest's output
        path: they must not block.  Returns a :class:`Subscription`: call it to unsubscribe.
        """
        with self._cond:
            if offset is not None:
                if offset < 0:
                    raise ConfigError(f"console offset {offset} is negative")
                if offset > self.end:
                    raise ConfigError(f"console offset {offset} is past the end of the output "
                                      f"({self.end} bytes so far)")
                start = max(offset, self._base)  # what was dropped beyond ``limit`` is gone
            else:
                start = self._base if history else self.end
            if start < self.end:
                listener("data", self._since(start))
            if self._input is not None:
                listener("open", None)
            else:
                listener("closed", self._closed_reason)
            self._listeners.append(listener)
            return Subscription(self, listener, start)

    def widget(self, history=True, title=None):
        """A live console for Jupyter: output as it arrives, an input line
        (:class:`xvm.display.ConsoleWidget`; needs ``pip install 'xvm[jupyter]'``)."""
        from .display import console_widget
        return console_widget(self, history=history, title=title)

    @property
    def closed_reason(self):
        """Why input is closed (None while the guest runs)."""
        return self._closed_reason

    # -- user side ----------------------------------------------------------
    @property
    def end(self):
        """Absolute position just after the newest byte."""
        return self._base + len(self._log)

    def log(self):
        """Everything still retained, oldest first (bytes)."""
        with self._cond:
            return bytes(self._log)

    def text(self):
        return self.log().decode("utf-8", "replace")

    def read(self):
        """Output that arrived since the previous ``read()`` (bytes, may be empty)."""
        with self._cond:
            data = self._since(self._read_pos)
            self._read_pos = self.end
            return data

    def write(self, data):
        """Send ``data`` (str or bytes) to the guest's serial input."""
        if isinstance(data, str):
            data = data.encode()
        with self._cond:
            sink = self._input
        if sink is None:
            raise StateError(f"cannot write to the console: {self._closed_reason}")
        sink(bytes(data))

    def expect(self, pattern, timeout=30.0):
        """Wait for ``pattern`` (a regex, str or bytes) in output since the last match.

        Returns the ``re.Match`` (on text if ``pattern`` is a str, on bytes
        otherwise).  A match that ends at the newest byte is held for up to
        50 ms so that a pattern such as ``echo: (.*)`` gets the whole line, not
        the part that had arrived.  Raises :class:`ConsoleTimeout` with the tail of the output
        if it does not appear in ``timeout`` seconds, and :class:`StateError` if
        the domain stops before it appears.
        """
        regex = re.compile(pattern) if isinstance(pattern, (str, bytes)) else pattern
        textual = isinstance(regex.pattern, str)
        deadline = time.monotonic() + timeout
        settle_until = None
        with self._cond:
            while True:
                window = self._since(self._expect_pos)
                haystack = window.decode("utf-8", "surrogateescape") if textual else window
                match = regex.search(haystack)
                if match and match.end() == len(haystack) and not self._is_closed() \
                        and settle_until is None:
                    # A match that ends at the newest byte may be cut short (``echo: (.*)``
                    # seeing half a line): give the rest of the output a moment to arrive.
                    settle_until = min(time.monotonic() + SETTLE, deadline)
                if match and (settle_until is None or match.end() < len(haystack)
                              or time.monotonic() >= settle_until or self._is_closed()):
                    consumed = haystack[: match.end()]
                    if textual:
                        consumed = consumed.encode("utf-8", "surrogateescape")
                    self._expect_pos = max(self._expect_pos, self._base) + len(consumed)
                    return match
                if self._is_closed():
                    raise StateError(
                        f"console closed ({self._closed_reason}) before {regex.pattern!r} appeared; "
                        f"last output:\n{window[-2000:].decode('utf-8', 'replace')}"
                    )
                wake = settle_until if match else deadline
                remaining = wake - time.monotonic()
                if remaining <= 0 and not match:
                    raise ConsoleTimeout(regex.pattern, timeout, window)
                self._cond.wait(max(remaining, 0))

    def _is_closed(self):
        return self._input is None

    def _since(self, position):
        start = max(position - self._base, 0)
        return bytes(self._log[start:])


class Subscription:
    """A listener of a :class:`Console` (:meth:`Console.subscribe`); calling it unsubscribes.
    ``start``: the position of the first byte the listener got (the end if none)."""

    def __init__(self, console, listener, start):
        self._console = console
        self._listener = listener
        self.start = start

    def __call__(self):
        with self._console._cond:
            if self._listener in self._console._listeners:
                self._console._listeners.remove(self._listener)

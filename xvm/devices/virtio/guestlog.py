"""Rate-limited, one-line logging of guest-caused errors.

A guest can break virtio rules as fast as it can write descriptors; each
break is counted by the device, but the host's log gets at most ``burst``
lines per ``interval`` seconds per device, then one line saying how many
more were suppressed.  Guest faults never carry a traceback: the rule broken
is the whole story.  :class:`RateLimitedLog` is also what the worker uses for
VMM bugs, which keep theirs.
"""
import logging
import time

DEFAULT_BURST = 5
DEFAULT_INTERVAL = 1.0


class RateLimitedLog:
    """At most ``burst`` records per ``interval`` seconds on ``logger``.

    ``emit(level, msg, *args)`` logs or counts a suppressed record;
    :meth:`flush` logs the pending "N more suppressed" summary at once.  Used
    by one thread at a time per instance (the device's worker, or a vCPU thread
    under the transport lock); a lost count under a race would be harmless.
    """

    def __init__(self, logger, name, *, burst=DEFAULT_BURST, interval=DEFAULT_INTERVAL,
                 clock=time.monotonic):
        self.logger = logger
        self.name = name
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._window_start = None
        self._in_window = 0
        self.suppressed = 0
        self._suppressed_level = logging.WARNING

    def emit(self, level, msg, *args, exc_info=None):
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self.interval:
            self.flush()
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            self._suppressed_level = max(self._suppressed_level, level)
            return False
        self._in_window += 1
        self.logger.log(level, "%s: " + msg, self.name, *args, exc_info=exc_info)
        return True

    def flush(self):
        if self.suppressed:
            self.logger.log(self._suppressed_level, "%s: %d more suppressed", self.name,
                            self.suppressed)
            self.suppressed = 0
            self._suppressed_level = logging.WARNING

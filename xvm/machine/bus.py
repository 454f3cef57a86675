"""Port-I/O and MMIO buses: address ranges dispatched to device objects.

A bus device implements ``read(offset, size) -> int`` and
``write(offset, size, value)``, where ``offset`` is relative to the base it
was registered at.  An access nobody claims reads as all-ones and is dropped,
as on real hardware.
"""
import bisect
import threading

from ..errors import ConfigError


class Bus:
    def __init__(self, name):
        self.name = name
        # (starts, ranges) published together as one tuple, so the vCPU threads'
        # lock-free lookups never see one list updated without the other.
        self._table = ((), ())  # starts; (start, end, device) sorted by start
        self._lock = threading.Lock()
        self.unclaimed = 0

    def register(self, base, size, device):
        if size <= 0:
            raise ConfigError(f"{self.name} range at {base:#x} has no size")
        with self._lock:
            starts, ranges = self._table
            i = bisect.bisect(starts, base)
            if (i > 0 and ranges[i - 1][1] > base) or (i < len(ranges) and base + size > ranges[i][0]):
                raise ConfigError(f"{self.name} range {base:#x}+{size:#x} overlaps a registered device")
            self._publish(ranges[:i] + ((base, base + size, device),) + ranges[i:])

    def unregister(self, device):
        with self._lock:
            self._publish(tuple(r for r in self._table[1] if r[2] is not device))

    def _publish(self, ranges):
        self._table = (tuple(r[0] for r in ranges), ranges)

    def find(self, address):
        """``(device, offset)`` for ``address``, or ``(None, 0)``."""
        starts, ranges = self._table
        i = bisect.bisect(starts, address) - 1
        if i >= 0:
            start, end, device = ranges[i]
            if address < end:
                return device, address - start
        return None, 0

    def read(self, address, size):
        device, offset = self.find(address)
        if device is None:
            self.unclaimed += 1
            return (1 << (8 * size)) - 1
        return device.read(offset, size)

    def write(self, address, size, value):
        device, offset = self.find(address)
        if device is None:
            self.unclaimed += 1
            return
        device.write(offset, size, value)

    def handle(self, address, size, is_write, data):
        """Serve one exit: ``data`` is the exit's memoryview (filled on reads)."""
        if is_write:
            self.write(address, size, int.from_bytes(data[:size], "little"))
        else:
            data[:size] = self.read(address, size).to_bytes(size, "little")

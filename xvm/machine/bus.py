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
        self._starts = []
        self._ranges = []  # (start, end, device), sorted by start
        self._lock = threading.Lock()
        self.unclaimed = 0

    def register(self, base, size, device):
        if size <= 0:
            raise ConfigError(f"{self.name} range at {base:#x} has no size")
        with self._lock:
            i = bisect.bisect(self._starts, base)
            if (i > 0 and self._ranges[i - 1][1] > base) or (
                i < len(self._ranges) and base + size > self._ranges[i][0]
            ):
                raise ConfigError(f"{self.name} range {base:#x}+{size:#x} overlaps a registered device")
            self._starts.insert(i, base)
            self._ranges.insert(i, (base, base + size, device))

    def unregister(self, device):
        with self._lock:
            keep = [(i, r) for i, r in enumerate(self._ranges) if r[2] is not device]
            self._ranges = [r for _, r in keep]
            self._starts = [r[0] for r in self._ranges]

    def find(self, address):
        """``(device, offset)`` for ``address``, or ``(None, 0)``."""
        ranges = self._ranges
        i = bisect.bisect(self._starts, address) - 1
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

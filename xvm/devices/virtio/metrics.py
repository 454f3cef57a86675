"""Counters every virtio device has; devices extend :class:`VirtioMetrics`.

Written by the device's worker thread (and the virtio core on it); reading
them from elsewhere gives a slightly stale but never torn value.
"""
from dataclasses import asdict, dataclass


@dataclass
class VirtioMetrics:
    activate_count: int = 0
    guest_error_count: int = 0  # every rule a guest broke: chains, requests, rings
    invalid_chain_count: int = 0  # a malformed descriptor chain, failed alone
    queue_error_count: int = 0  # a corrupt ring: the device needs a reset
    interrupt_count: int = 0  # used buffer notifications sent

    def snapshot(self):
        return asdict(self)

"""virtio-blk counters, named after the events they count.

The counters every virtio device has (``guest_error_count``,
``invalid_chain_count``, ``queue_error_count``, ``interrupt_count``...) come
from :class:`~xvm.devices.virtio.metrics.VirtioMetrics`.  Written by the
device's worker thread only; reading them from elsewhere gives a slightly
stale but never torn value (each is a single int).
"""
from dataclasses import dataclass

from ..virtio.metrics import VirtioMetrics


@dataclass
class BlockMetrics(VirtioMetrics):
    queue_notify_count: int = 0
    read_count: int = 0
    read_bytes: int = 0
    write_count: int = 0
    write_bytes: int = 0
    flush_count: int = 0
    fdatasync_count: int = 0
    get_id_count: int = 0
    discard_count: int = 0
    write_zeroes_count: int = 0
    unsupported_count: int = 0
    io_error_count: int = 0
    invalid_request_count: int = 0  # a malformed request header or segment

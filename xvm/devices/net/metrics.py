"""virtio-net counters, named after the events they count.

The counters every virtio device has (``guest_error_count``,
``invalid_chain_count``, ``queue_error_count``, ``interrupt_count``...) come
from :class:`~xvm.devices.virtio.metrics.VirtioMetrics`.  Written by the
device's worker thread only; reading them from elsewhere gives a slightly
stale but never torn value (each is a single int).
"""
from dataclasses import dataclass

from ..virtio.metrics import VirtioMetrics


@dataclass
class NetMetrics(VirtioMetrics):
    rx_notify_count: int = 0
    tx_notify_count: int = 0
    tap_readable_count: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped_count: int = 0  # a frame no buffer chain could hold
    rx_starved_count: int = 0  # the guest had no rx buffers: TAP polling stopped
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped_count: int = 0  # a malformed tx request, dropped alone
    tap_write_error_count: int = 0
    ctrl_notify_count: int = 0
    ctrl_command_count: int = 0
    ctrl_error_count: int = 0  # answered VIRTIO_NET_ERR (or, without an ack byte, not at all)
    queue_pairs_set_count: int = 0  # VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET carried out

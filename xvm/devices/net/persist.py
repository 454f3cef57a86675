"""Plain-data state of a virtio-net device, for snapshots.

The queues' cursors belong to the transport's state; this is what the net
device itself must find again: its MAC, MTU, bridge, the features the
driver accepted, its queue pairs and how many of them the driver enabled
(VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).  States saved before multiqueue have
neither field: they load as one pair.  Frames in flight are not state: a frame read from the TAP
but not yet delivered is dropped on save, as a switch may drop it.
"""
from dataclasses import dataclass

from ...persist import PlainState


@dataclass(frozen=True)
class NetState(PlainState):
    mac: str
    mtu: int
    bridge: str | None
    acked_features: int
    queue_size: int
    queue_pairs: int = 1
    active_pairs: int = 1

"""Plain-data state of a virtio-blk device, for snapshots.

The queues' cursors belong to the transport's state
(:class:`~xvm.devices.virtio.persist.TransportState`); this is what the block
device itself must find again: the same image, the same capacity, the
features the driver accepted.  In-flight requests need no state: requests
complete synchronously on the worker, and the machine stops the worker
(pause) before saving.
"""
from dataclasses import dataclass

from ...persist import PlainState


@dataclass(frozen=True)
class BlockState(PlainState):
    path: str
    readonly: bool
    serial: str | None
    cache: str
    capacity: int
    acked_features: int
    queue_size: int


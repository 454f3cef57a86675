"""Plain-data state of a virtio-blk device, for snapshots.

The queues' cursors belong to the transport's state
(:class:`~xvm.devices.virtio.persist.TransportState`); this is what the block
device itself must find again: the same image, the same capacity, the
features the driver accepted.  In-flight requests need no state: requests
complete synchronously on the worker, and the machine stops the worker
(pause) before saving.
"""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BlockState:
    path: str
    readonly: bool
    serial: str | None
    cache: str
    capacity: int
    acked_features: int
    queue_size: int

    def save(self):
        return asdict(self)

    @classmethod
    def restore(cls, data):
        return cls(**data)

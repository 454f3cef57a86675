"""virtio-blk: the block device of the split-driver model (virtio 1.2 §5.2).

``Disk`` is the public configuration; ``VirtioBlock`` the device, carried by
any virtio transport (``xvm.devices.virtio.VirtioMmioDevice``).
"""
from .device import VIRTIO_ID_BLOCK, VirtioBlock
from .disk import Disk
from .errors import BackendError, DiskBusyError, DiskConfigError
from .metrics import BlockMetrics
from .persist import BlockState

__all__ = ["Disk", "VirtioBlock", "VIRTIO_ID_BLOCK", "BackendError", "DiskBusyError",
           "DiskConfigError", "BlockMetrics", "BlockState"]

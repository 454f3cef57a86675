"""The virtio core: split virtqueue, device protocol, bounded queue service,
virtio-mmio and virtio-pci transports.

Mechanism only: devices (``xvm.devices.block`` ...) build on these pieces and
the machine wires transports onto its buses explicitly.
"""
from .batch import Batch, serve_queue
from .device import (
    EventFdLine, Interrupt, InterruptKind, VirtioDevice, DeviceStatus,
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
)
from .errors import ChainError, FeatureError, QueueError, StatusError, VirtioGuestError
from .metrics import VirtioMetrics
from .mmio import MMIO_SIZE, VirtioMmioDevice
from .queue import DescriptorChain, Queue
from .transport import VirtioTransport
from .worker import Worker

"""The virtio core: split virtqueue, device protocol, virtio-mmio transport.

Mechanism only: devices (``xvm.devices.block`` ...) build on these pieces and
the machine wires transports onto its buses explicitly.
"""
from .device import (
    EventFdLine, Interrupt, InterruptKind, VirtioDevice, DeviceStatus,
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
)
from .errors import ChainError, FeatureError, QueueError, StatusError, VirtioGuestError
from .mmio import MMIO_SIZE, VirtioMmioDevice
from .queue import DescriptorChain, Queue
from .transport import VirtioTransport
from .worker import Worker

"""Plain-data state of the virtio core, for snapshots (no serializer here)."""
from dataclasses import dataclass

from ...persist import PlainState


@dataclass(frozen=True)
class QueueState(PlainState):
    """A virtqueue as the driver configured it plus the device's cursors."""

    size: int
    desc_table: int
    avail_ring: int
    used_ring: int
    event_idx: bool
    indirect: bool
    next_avail: int
    next_used: int
    signalled_used: int | None = None


@dataclass(frozen=True)
class QueueConfigState(PlainState):
    """A transport's per-queue registers (before or after activation)."""

    size: int
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int


@dataclass(frozen=True)
class TransportState:
    """The transport-independent part of a virtio function's state."""

    status: int
    driver_features: int
    interrupt_status: int
    config_generation: int
    queues: tuple  # of QueueConfigState
    active_queues: tuple  # of QueueState, empty unless DRIVER_OK

    def save(self):
        return {
            "status": self.status,
            "driver_features": self.driver_features,
            "interrupt_status": self.interrupt_status,
            "config_generation": self.config_generation,
            "queues": [q.save() for q in self.queues],
            "active_queues": [q.save() for q in self.active_queues],
        }

    @classmethod
    def restore(cls, data):
        return cls(
            data["status"], data["driver_features"], data["interrupt_status"],
            data["config_generation"],
            tuple(QueueConfigState.restore(q) for q in data["queues"]),
            tuple(QueueState.restore(q) for q in data["active_queues"]),
        )


@dataclass(frozen=True)
class VirtioMmioState:
    """A virtio-mmio window: the transport plus the driver's selector registers."""

    transport: TransportState
    device_features_sel: int = 0
    driver_features_sel: int = 0
    queue_sel: int = 0
    shm_sel: int = 0

    def save(self):
        return {"transport": self.transport.save(), "device_features_sel": self.device_features_sel,
                "driver_features_sel": self.driver_features_sel, "queue_sel": self.queue_sel,
                "shm_sel": self.shm_sel}

    @classmethod
    def restore(cls, data):
        return cls(TransportState.restore(data["transport"]), data["device_features_sel"],
                   data["driver_features_sel"], data["queue_sel"], data["shm_sel"])

"""Where a virtio-net NIC's frames go.

A backend is small: ``fileno()`` (pollable for readable frames),
``read_into(buffer)`` (one frame with its 12-byte virtio-net header, or None),
``writev(views)`` (one frame, header first), ``set_offload(tun_flags)``,
``offloads`` (the TUN_F_* flags the host accepts) and ``close()``; one queue
of a multi-queue backend also has ``set_queue_attached(on)``.
New backends are one file.
"""
from .tap import Tap

__all__ = ["Tap"]

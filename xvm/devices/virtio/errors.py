"""Errors of the virtio core.

Guest-caused faults (a malformed ring, a hostile descriptor chain, an illegal
status write) derive from :class:`VirtioGuestError`: they fail one request or
put the device in DEVICE_NEEDS_RESET, never the VMM.  ``reason`` is a short
text naming the violated rule and the spec section.
"""
from ...errors import ConfigError, GuestError


class VirtioGuestError(GuestError):
    """The driver broke a rule of the virtio specification."""

    def __init__(self, reason, **details):
        detail = ", ".join(f"{k}={_fmt(v)}" for k, v in details.items())
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.details = details


class QueueError(VirtioGuestError):
    """The virtqueue itself is unusable (bad ring addresses, a corrupt avail
    index): the device should set DEVICE_NEEDS_RESET."""


class ChainError(QueueError):
    """One descriptor chain is malformed.  Its head has been consumed from the
    available ring; ``head`` is its index so the device can return it to the
    used ring (used length 0) and fail only that request."""

    def __init__(self, reason, head=None, **details):
        super().__init__(reason, head=head, **details)
        self.head = head


class StatusError(VirtioGuestError):
    """An illegal device-status transition (§2.1, §3.1.1)."""


class FeatureError(VirtioGuestError):
    """The driver accepted features the device cannot work with (§2.2, §6)."""


class VirtioConfigError(ConfigError):
    """A virtio device or transport was constructed with invalid arguments."""


def _fmt(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 9:
        return hex(value)
    return repr(value)

"""Errors of the block device."""
from ...errors import ConfigError, HostError


class DiskConfigError(ConfigError):
    """A :class:`~xvm.devices.block.Disk` is unusable; ``path`` names it."""

    def __init__(self, message, path=None, errno=None):
        super().__init__(message)
        self.path = path
        self.errno = errno


class DiskBusyError(DiskConfigError):
    """The disk image is locked by another process or domain."""


class BackendError(HostError):
    """A host I/O call on the disk image failed (the request gets IOERR)."""

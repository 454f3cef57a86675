"""Where a virtio-blk disk's bytes go.

A backend is small (kvmtool's disk-image.h): ``size`` in bytes,
``readonly``, ``readv(offset, views)``, ``writev(offset, views)``,
``flush()``, ``discard(offset, length)``, ``write_zeroes(offset, length,
unmap)``, ``close()``, plus ``supports_discard``/``supports_write_zeroes``.
I/O errors are raised as :class:`~xvm.devices.block.errors.BackendError`.
New backends are one file.
"""
from .raw import RawFile
from .blockdev import BlockDevice

__all__ = ["RawFile", "BlockDevice"]

"""A host block device (a partition, an LVM volume, a zvol, a loop device).

Same data path as :class:`~.raw.RawFile`; the size comes from the
BLKGETSIZE64 ioctl (``lseek(SEEK_END)`` as fallback), discard is BLKDISCARD
and write-zeroes BLKZEROOUT.
"""
import errno
import fcntl
import os
import struct

from ..errors import BackendError
from .raw import RawFile

# <linux/fs.h>
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKDISCARD = 0x1277  # _IO(0x12, 119)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)


class BlockDevice(RawFile):
    """A host block device as a disk backend."""

    kind = "blockdev"

    def _probe_size(self):
        return self.probe_size_of(self.fd)

    @staticmethod
    def probe_size_of(fd):
        try:
            buf = fcntl.ioctl(fd, BLKGETSIZE64, bytes(8))
            return struct.unpack("<Q", buf)[0]
        except OSError:
            return os.lseek(fd, 0, os.SEEK_END)

    def _range_ioctl(self, request, name, offset, length):
        try:
            fcntl.ioctl(self.fd, request, struct.pack("<QQ", offset, length))
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                return False
            raise BackendError(f"{name} on {self.path!r} at {offset} failed: {e.strerror}",
                               e.errno) from None
        return True

    def discard(self, offset, length):
        self._range_ioctl(BLKDISCARD, "BLKDISCARD", offset, length)

    def write_zeroes(self, offset, length, unmap=False):
        if not self._range_ioctl(BLKZEROOUT, "BLKZEROOUT", offset, length):
            self._write_zero_bytes(offset, length)

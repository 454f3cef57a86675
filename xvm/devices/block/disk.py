"""The public configuration of a disk: :class:`Disk`."""
import errno
import os
import stat
from dataclasses import dataclass

from .backend.blockdev import BlockDevice
from .backend.raw import CACHE_MODES, SECTOR_SIZE, RawFile
from .errors import DiskConfigError

VIRTIO_BLK_ID_BYTES = 20


@dataclass(frozen=True)
class Disk:
    """A disk for a domain: a raw image file or a host block device.

    Validated on construction — the path exists, is a regular file or block
    device, can be opened (for writing unless ``readonly``), is not locked by
    another user, and its size is a multiple of 512 — so a bad disk is a
    :class:`~xvm.errors.ConfigError` naming the path before anything starts.
    ``serial`` (at most 20 ASCII bytes) is what the guest reads with GET_ID.
    ``cache`` is ``"none"`` (default: host page cache, FLUSH offered and
    completed only after fdatasync), ``"writethrough"`` (every write
    O_DSYNC), ``"writeback"`` (same guarantees as ``none``, an explicit
    opt-in name) or ``"unsafe"`` (FLUSH does nothing).
    """

    path: str
    readonly: bool = False
    serial: str | None = None
    cache: str = "none"

    def __post_init__(self):
        try:
            path = os.fspath(self.path)
        except TypeError:
            raise DiskConfigError(f"disk path {self.path!r} is not a path") from None
        object.__setattr__(self, "path", path)
        if self.cache not in CACHE_MODES:
            raise DiskConfigError(f"disk {path!r}: cache mode {self.cache!r} is not one of "
                                  f"{', '.join(CACHE_MODES)}", path)
        if self.serial is not None:
            try:
                raw = self.serial.encode("ascii")
            except (UnicodeEncodeError, AttributeError):
                raise DiskConfigError(f"disk {path!r}: serial {self.serial!r} is not ASCII",
                                      path) from None
            if len(raw) > VIRTIO_BLK_ID_BYTES:
                raise DiskConfigError(f"disk {path!r}: serial {self.serial!r} is longer than "
                                      f"{VIRTIO_BLK_ID_BYTES} bytes", path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise DiskConfigError(f"disk image {path!r} does not exist", path,
                                  errno.ENOENT) from None
        except OSError as e:
            raise DiskConfigError(f"disk image {path!r} cannot be examined: {e.strerror}",
                                  path, e.errno) from None
        if stat.S_ISDIR(mode):
            raise DiskConfigError(f"disk image {path!r} is a directory", path, errno.EISDIR)
        # Opening the backend checks access, the lock and the size; then let go.
        self.open().close()

    @property
    def is_block_device(self):
        return stat.S_ISBLK(os.stat(self.path).st_mode)

    @property
    def serial_bytes(self):
        """The GET_ID answer: the serial NUL-padded to 20 bytes (§5.2.6)."""
        raw = (self.serial or "").encode("ascii")
        return raw + bytes(VIRTIO_BLK_ID_BYTES - len(raw))

    def open(self):
        """Open the backend; it holds the image's lock until closed."""
        cls = BlockDevice if self.is_block_device else RawFile
        return cls(self.path, readonly=self.readonly, cache=self.cache)

    @property
    def size(self):
        """Size in bytes now (no lock taken, so it works while the disk is in use)."""
        if not self.is_block_device:
            return os.stat(self.path).st_size
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return BlockDevice.probe_size_of(fd)
        finally:
            os.close(fd)

    @property
    def capacity(self):
        """Size in 512-byte sectors."""
        return self.size // SECTOR_SIZE

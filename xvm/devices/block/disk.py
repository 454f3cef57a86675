"""The public configuration of a disk: :class:`Disk`."""
import errno
import os
import stat
import re
from dataclasses import dataclass, fields, replace

from .backend.blockdev import BlockDevice
from .backend.raw import CACHE_MODES, SECTOR_SIZE, RawFile
from .errors import DiskConfigError

VIRTIO_BLK_ID_BYTES = 20
# "POOL/VOLUME": the names xvm.storage accepts for pools and volumes (xvm/storage/config.py).
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _volume_name(value):
    if not isinstance(value, str) or not VOLUME_NAME.fullmatch(value):
        raise DiskConfigError(f"disk volume {value!r} is not a 'POOL/VOLUME' name (each part 1-64 "
                              "letters, digits, '_', '.' or '-', starting with a letter or digit)")
    return value


@dataclass(frozen=True)
class Disk:
    """A disk for a domain: a raw image file or a host block device, given by
    ``path``, or a volume of a storage pool, given by ``volume="POOL/VOLUME"``
    (exactly one of the two).

    Plain data: construction checks the values (``path`` is a path, made
    absolute; ``volume`` is a "POOL/VOLUME" name; ``cache`` is a known mode; ``serial`` is at most 20 ASCII bytes;
    ``readonly`` is a bool) and touches nothing on the host.  :meth:`check`
    (run by :func:`xvm.config.preflight` when a domain starts) verifies the
    image itself: it exists, is a regular file or block device, opens for
    writing unless ``readonly``, is not locked by another user and is a whole
    number of 512-byte sectors — a :class:`~xvm.errors.ConfigError` naming
    the path.
    A volume disk is resolved to its volume's path by the host when the
    domain starts (:meth:`resolved`); the stored config keeps the name.
    ``serial`` is what the guest reads with GET_ID.
    ``cache`` is ``"none"`` (default: host page cache, FLUSH offered and
    completed only after fdatasync), ``"writethrough"`` (every write
    O_DSYNC), ``"writeback"`` (same guarantees as ``none``, an explicit
    opt-in name) or ``"unsafe"`` (FLUSH does nothing).
    """

    path: str | None = None
    readonly: bool = False
    serial: str | None = None
    cache: str = "none"
    volume: str | None = None

    def __post_init__(self):
        if (self.path is None) == (self.volume is None):
            raise DiskConfigError("a Disk needs exactly one of path= (an image file or block "
                                  "device) or volume= (a storage pool volume, 'POOL/VOLUME')",
                                  self.path)
        if self.volume is not None:
            path = _volume_name(self.volume)  # named in the messages below
        else:
            try:
                path = os.fspath(self.path)
            except TypeError:
                raise DiskConfigError(f"disk path {self.path!r} is not a path") from None
            if not isinstance(path, str) or not path or "\0" in path:
                raise DiskConfigError(f"disk path {self.path!r} is not a path")
            path = os.path.abspath(path)
            object.__setattr__(self, "path", path)
        if not isinstance(self.readonly, bool):
            raise DiskConfigError(f"disk {path!r}: readonly must be True or False, not "
                                  f"{self.readonly!r}", path)
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

    # -- plain data ------------------------------------------------------------------

    @property
    def source(self):
        """What the disk names: its path, or "POOL/VOLUME"."""
        return self.path if self.volume is None else self.volume

    def resolved(self, path):
        """This disk with its volume replaced by ``path``, the volume's host path (what
        the host gives a VMM when the domain starts)."""
        return replace(self, path=path, volume=None)

    def to_dict(self):
        """JSON-able: ``{"path" or "volume", "readonly", "serial", "cache"}``."""
        drop = "volume" if self.volume is None else "path"
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != drop}

    @classmethod
    def from_dict(cls, data):
        """The Disk :meth:`to_dict` gave ``data``; DiskConfigError names an unknown,
        missing or bad field."""
        if not isinstance(data, dict):
            raise DiskConfigError(f"a disk must be a dict, not {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [name for name in data if name not in known]
        if unknown:
            raise DiskConfigError(f"disk: unknown field(s) {', '.join(map(repr, unknown))}; "
                                  f"known: {', '.join(known)}", data.get("path"))
        if ("path" in data) == ("volume" in data):
            raise DiskConfigError("disk: needs exactly one of the fields 'path' and 'volume'")
        return cls(**data)

    # -- the host side ---------------------------------------------------------------

    def check(self, lock=True):
        """Check the image on the host as opening it would (exists, type, access,
        lock unless ``lock=False``, size), then let go; raises DiskConfigError /
        DiskBusyError.  A volume disk must be :meth:`resolved` first."""
        if self.volume is not None:
            raise DiskConfigError(f"disk volume {self.volume!r} has not been resolved to a path "
                                  "(the host does that when the domain starts)")
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            raise DiskConfigError(f"disk image {self.path!r} does not exist", self.path,
                                  errno.ENOENT) from None
        except OSError as e:
            raise DiskConfigError(f"disk image {self.path!r} cannot be examined: {e.strerror}",
                                  self.path, e.errno) from None
        if stat.S_ISDIR(mode):
            raise DiskConfigError(f"disk image {self.path!r} is a directory", self.path,
                                  errno.EISDIR)
        self.open(lock=lock).close()

    @property
    def is_block_device(self):
        return stat.S_ISBLK(os.stat(self.path).st_mode)

    @property
    def serial_bytes(self):
        """The GET_ID answer: the serial NUL-padded to 20 bytes (§5.2.6)."""
        raw = (self.serial or "").encode("ascii")
        return raw + bytes(VIRTIO_BLK_ID_BYTES - len(raw))

    def open_fd(self, lock=True):
        """Open and lock the image as :meth:`open` would and return the bare fd
        (the caller owns it): what a parent passes to a VMM process, which
        builds the backend with ``open(fd=...)``.  The lock is an ``flock``,
        held by the open file description, so it travels with the fd and lasts
        until every copy of it is closed.  ``lock=False``: opened but not locked
        (a live migration's destination locks it at the switchover)."""
        return self.open(lock=lock).detach()

    def open(self, fd=None, lock=True):
        """Open the backend; it holds the image's lock until closed.

        With ``fd`` (an fd of this image, e.g. from :meth:`open_fd` in another
        process) the backend is built over that open file instead of opening
        the path; it takes ownership of ``fd`` (closes it on failure too).  The
        fd's access mode must suit ``readonly`` and ``cache``; its lock is
        taken again (a no-op when the opener already holds it), unless ``lock=False``
        (the backend's ``take_lock()`` takes it later).
        """
        if self.volume is not None:
            raise DiskConfigError(f"disk volume {self.volume!r} has not been resolved to a path "
                                  "(the host does that when the domain starts)")
        if fd is None:
            cls = BlockDevice if self.is_block_device else RawFile
            return cls(self.path, readonly=self.readonly, cache=self.cache, lock=lock)
        try:
            mode = os.fstat(fd).st_mode
        except OSError as e:
            os.close(fd)
            raise DiskConfigError(f"disk {self.path!r}: fd {fd} is not usable: {e.strerror}",
                                  self.path, e.errno) from None
        cls = BlockDevice if stat.S_ISBLK(mode) else RawFile
        return cls(self.path, readonly=self.readonly, cache=self.cache, fd=fd, lock=lock)

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

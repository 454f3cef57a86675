"""A raw disk image in a host file (sparse files welcome).

Data moves with ``os.preadv``/``os.pwritev`` straight between the file and
guest-memory views, no copies; flush is ``fdatasync``; discard punches a hole
(``fallocate(PUNCH_HOLE|KEEP_SIZE)``); write-zeroes uses ``ZERO_RANGE`` (or a
hole when the driver allows unmapping) and falls back to writing zeros.

The image is locked with ``flock`` for the backend's life: exclusive for a
read-write disk, shared for a read-only one, so two domains never write the
same image.  The lock belongs to the open file description, so a backend can
be built over an fd opened (and locked) by another process: ``fd=``.  The cache mode picks the open flags and what flush does:

* ``none`` (default) and ``writeback``: writes land in the host page cache;
  FLUSH completes only after ``fdatasync``.
* ``writethrough``: the file is opened ``O_DSYNC``; every write is durable
  when it completes (FLUSH still does ``fdatasync``).
* ``unsafe``: FLUSH is a no-op — for throw-away guests only.
"""
import ctypes
import errno
import fcntl
import os
import stat

from ..errors import BackendError, DiskBusyError, DiskConfigError

SECTOR_SIZE = 512
CACHE_MODES = ("none", "writethrough", "writeback", "unsafe")

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

try:
    IOV_MAX = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):
    IOV_MAX = 1024

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def fallocate(fd, mode, offset, length):
    """fallocate(2) with a mode (``os.posix_fallocate`` has none); the GIL is
    released during the call."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_image(path, readonly, cache="none", lock=True):
    """Open and lock ``path`` (``lock=False``: open only, see :func:`lock_image`); returns
    the fd.  Raises DiskConfigError/DiskBusyError naming the path."""
    flags = os.O_CLOEXEC | (os.O_RDONLY if readonly else os.O_RDWR)
    if cache == "writethrough" and not readonly:
        flags |= os.O_DSYNC
    try:
        if not readonly and stat.S_ISBLK(os.stat(path).st_mode):
            # O_EXCL on a block device: EBUSY if the host has it mounted or in use.
            flags |= os.O_EXCL
    except OSError:
        pass  # the open below reports it
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DiskConfigError(f"disk image {path!r} does not exist", path,
                              errno.ENOENT) from None
    except IsADirectoryError:
        raise DiskConfigError(f"disk image {path!r} is a directory", path,
                              errno.EISDIR) from None
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise DiskBusyError(f"disk {path!r} is in use by the host (mounted, or held "
                                "by another program)", path, e.errno) from None
        how = "reading" if readonly else "writing (use readonly=True for a read-only disk)"
        raise DiskConfigError(f"disk image {path!r} cannot be opened for {how}: "
                              f"{e.strerror}", path, e.errno) from None
    try:
        lock_image(fd, path, readonly, lock=lock)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_image(fd, path, readonly, cache="none", lock=True):
    """Check that ``fd`` is an image (regular file or block device) opened as
    ``readonly`` and ``cache`` need, and lock it: ``flock``, shared for a
    read-only disk, exclusive otherwise.

    An flock belongs to the open file description, not to the process: an fd
    passed to another process (SCM_RIGHTS, or inherited) carries the lock, and
    it is released only when the last fd of that description is closed.
    Locking again through a description that already holds the lock is a no-op.
    ``lock=False`` checks only: the lock is taken later (:func:`flock_image`), as a
    live migration's destination does once the source has let go of the image.
    (POSIX ``fcntl`` record locks would be wrong here: they belong to the
    process and vanish when the opener closes any fd of the file.)
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise DiskConfigError(f"disk image {path!r} is a directory", path, errno.EISDIR)
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise DiskConfigError(f"disk image {path!r} is neither a regular file nor a "
                              "block device", path)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not readonly and flags & os.O_ACCMODE == os.O_RDONLY:
        raise DiskConfigError(f"disk image {path!r}: the fd given was opened read-only but "
                              "the disk is writable", path, errno.EBADF)
    if cache == "writethrough" and not readonly and not flags & os.O_DSYNC:
        raise DiskConfigError(f"disk image {path!r}: cache='writethrough' needs an fd "
                              "opened with O_DSYNC", path, errno.EINVAL)
    if lock:
        flock_image(fd, path, readonly)


def flock_image(fd, path, readonly):
    """Take the image's ``flock`` on ``fd``'s open file description (shared when
    ``readonly``), without waiting; DiskBusyError if another user holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "writer" if readonly else "user"
        raise DiskBusyError(f"disk image {path!r} is locked by another {holder} "
                            "(in use by another domain or process)", path,
                            errno.EWOULDBLOCK) from None


def _advance(views, done):
    """``views`` with the first ``done`` bytes removed."""
    out = []
    for view in views:
        if done >= len(view):
            done -= len(view)
            continue
        out.append(view[done:] if done else view)
        done = 0
    return out


class RawFile:
    """A raw image file as a disk backend."""

    kind = "raw"

    def __init__(self, path, readonly=False, cache="none", *, fd=None, lock=True):
        """Open and lock ``path``; or, with ``fd``, use that already-open file of
        it (ownership passes to the backend, which closes it on failure too).
        ``lock=False``: the lock is not taken (:meth:`take_lock` does it later)."""
        if cache not in CACHE_MODES:
            if fd is not None:
                os.close(fd)
            raise DiskConfigError(f"cache mode {cache!r} is not one of {CACHE_MODES}", path)
        self.path = os.fspath(path)
        self.readonly = readonly
        self.cache = cache
        if fd is None:
            self.fd = open_image(self.path, readonly, cache, lock=lock)
        else:
            try:
                lock_image(fd, self.path, readonly, cache, lock=lock)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        try:
            self.size = self._probe_size()
        except BaseException:
            os.close(self.fd)
            raise
        if self.size % SECTOR_SIZE:
            os.close(self.fd)
            raise DiskConfigError(f"disk image {self.path!r} is {self.size} bytes, not a "
                                  f"multiple of {SECTOR_SIZE}", self.path)
        self.supports_discard = not readonly
        self.supports_write_zeroes = not readonly

    def _probe_size(self):
        return os.fstat(self.fd).st_size

    # -- data ------------------------------------------------------------------

    def readv(self, offset, views):
        """Fill ``views`` from ``offset``; bytes past the end of the file read as 0."""
        views = [v for v in views if len(v)]
        while views:
            batch = views[:IOV_MAX]
            try:
                n = os.preadv(self.fd, batch, offset)
            except OSError as e:
                raise BackendError(f"read of {self.path!r} at {offset} failed: {e.strerror}",
                                   e.errno) from None
            if n == 0:  # the file shrank under us: what is not there is zero
                for view in views:
                    view[:] = bytes(len(view))
                return
            offset += n
            views = _advance(views, n)

    def writev(self, offset, views):
        views = [v for v in views if len(v)]
        while views:
            batch = views[:IOV_MAX]
            try:
                n = os.pwritev(self.fd, batch, offset)
            except OSError as e:
                raise BackendError(f"write of {self.path!r} at {offset} failed: {e.strerror}",
                                   e.errno) from None
            if n == 0:
                raise BackendError(f"write of {self.path!r} at {offset} made no progress",
                                   errno.EIO)
            offset += n
            views = _advance(views, n)

    def flush(self):
        """Make completed writes durable; returns True if fdatasync ran."""
        if self.cache == "unsafe":
            return False
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise BackendError(f"fdatasync of {self.path!r} failed: {e.strerror}",
                               e.errno) from None
        return True

    def discard(self, offset, length):
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                return  # discard is a hint (§5.2.6.2): nothing to do
            raise BackendError(f"discard of {self.path!r} at {offset} failed: {e.strerror}",
                               e.errno) from None

    def write_zeroes(self, offset, length, unmap=False):
        modes = ([FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE] if unmap else []) + [
            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
        for mode in modes:
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise BackendError(f"write-zeroes of {self.path!r} at {offset} failed: "
                                       f"{e.strerror}", e.errno) from None
        self._write_zero_bytes(offset, length)

    def _write_zero_bytes(self, offset, length):
        chunk = memoryview(bytes(min(length, 1 << 20)))
        while length:
            n = min(length, len(chunk))
            self.writev(offset, [chunk[:n]])
            offset += n
            length -= n

    def release_lock(self):
        """Let go of the image's lock (for every copy of this open file, in any process):
        a live migration's source, paused and flushed, hands the image over."""
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def take_lock(self):
        """Take the image's lock again (DiskBusyError if another user holds it)."""
        flock_image(self.fd, self.path, self.readonly)

    def detach(self):
        """Give up the fd without closing it (the lock goes with it); returns it."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock unless another fd shares the description
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

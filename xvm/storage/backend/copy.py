"""Copy one file to a new name: a reflink (``FICLONE``) where the filesystem shares extents, else
a sparse full copy with progress. Either way the copy appears under its name only when complete:
it is made in a hidden temporary file beside the target and renamed; on any failure (I/O error,
no space, the progress callback raising) the temporary file is removed and nothing is left.
"""
import errno
import fcntl
import os
import secrets

from ..errors import StorageExistsError, StorageHostError

FICLONE = 0x40049409  # _IOW(0x94, 9, int), <linux/fs.h>
CHUNK = 4 << 20
# FICLONE's answers that mean "this filesystem (pair) cannot share extents": fall back to a copy.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}

REFLINK = "reflink"
COPY = "copy"


def temporary_name(directory):
    return os.path.join(directory, f".xvm-tmp-{secrets.token_hex(6)}")


def copy_file(src, dst, *, operation, replace=False, progress=None, reflink=True):
    """Copy ``src`` to ``dst``; return ``"reflink"`` or ``"copy"``, the way it was made.

    ``progress(copied_bytes, total_bytes)`` is called during a full copy (never for a reflink).
    ``replace=False`` refuses an existing ``dst`` (StorageExistsError); ``replace=True`` swaps the
    complete copy in atomically. ``reflink=False`` forces a full copy.
    """
    tmp = temporary_name(os.path.dirname(dst))
    try:
        with open(src, "rb") as source, open(tmp, "xb") as target:
            os.fchmod(target.fileno(), 0o600)
            size = os.fstat(source.fileno()).st_size
            method = COPY
            if reflink and _reflink(source.fileno(), target.fileno()):
                method = REFLINK
            else:
                _sparse_copy(source.fileno(), target.fileno(), size, progress)
            os.fsync(target.fileno())
        if replace:
            os.rename(tmp, dst)
        else:
            os.link(tmp, dst)  # fails if dst exists, unlike rename
            os.unlink(tmp)
        return method
    except OSError as e:
        _unlink(tmp)
        if e.errno == errno.EEXIST and not replace:
            raise StorageExistsError(f"{operation}: {dst} exists already", target=dst,
                                     operation=operation) from None
        where = f" ({e.filename})" if e.filename else ""
        raise StorageHostError(f"{operation}: copying {src} to {dst} failed: {e.strerror}{where}; "
                               "nothing was left behind", target=dst, operation=operation,
                               errno=e.errno) from None
    except BaseException:
        _unlink(tmp)
        raise


def _reflink(src_fd, dst_fd):
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in _NO_REFLINK:
            return False
        raise
    return True


def _sparse_copy(src_fd, dst_fd, size, progress):
    """Copy the data extents only (SEEK_DATA/SEEK_HOLE), so holes stay holes."""
    os.ftruncate(dst_fd, size)
    copied = 0
    if progress is not None:
        progress(0, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = os.lseek(src_fd, start, os.SEEK_HOLE)
        while start < end:
            n = _copy_range(src_fd, dst_fd, start, min(CHUNK, end - start))
            start += n
            copied += n
            if progress is not None:
                progress(copied, size)
        offset = end
    if progress is not None and copied != size:
        progress(size, size)  # the holes count as done


def _copy_range(src_fd, dst_fd, offset, length):
    try:
        n = os.copy_file_range(src_fd, dst_fd, length, offset, offset)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        n = 0
    if n > 0:
        return n
    data = os.pread(src_fd, length, offset)
    if not data:
        raise OSError(errno.EIO, "source file shrank during the copy")
    view = memoryview(data)
    while view:
        written = os.pwrite(dst_fd, view, offset)
        view = view[written:]
        offset += written
    return len(data)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

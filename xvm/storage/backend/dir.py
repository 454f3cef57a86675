"""A directory pool: each volume is a raw sparse file ``PATH/NAME``; its snapshots are files
``PATH/.xvm-snapshots/NAME/SNAPSHOT``. Snapshots, rollbacks and clones are reflinks where the
filesystem shares extents (XFS, btrfs) and full sparse copies otherwise. A clone is a file of its
own: it never depends on its origin.
"""
import errno
import os
import shutil

from ..errors import StorageExistsError, StorageHostError, StorageNotFoundError
from .copy import copy_file

SNAPSHOT_DIR = ".xvm-snapshots"


class DirBackend:
    type = "dir"
    clones_depend_on_origin = False

    def __init__(self, pool):
        self.pool = pool
        self.root = pool.path
        self.description = f"directory {self.root}"

    def _fail(self, operation, target, e):
        if e.errno == errno.ENOENT:
            return StorageNotFoundError(f"{operation} {target}: {e.strerror}", target=target,
                                        operation=operation)
        return StorageHostError(f"{operation} {target}: {e.strerror}", target=target,
                                operation=operation, errno=e.errno)

    # -- the pool -----------------------------------------------------------------------------

    def open_pool(self):
        """Check the directory, creating it (not its parents) if missing; True if it was made."""
        try:
            os.mkdir(self.root, 0o700)
            made = True
        except FileExistsError:
            made = False
        except FileNotFoundError:
            raise StorageNotFoundError(f"create pool {self.pool.name!r}: the parent of {self.root} "
                                       "does not exist", target=self.root,
                                       operation="create pool") from None
        except OSError as e:
            raise self._fail("create pool", self.root, e) from None
        if not os.path.isdir(self.root):
            raise StorageExistsError(f"create pool {self.pool.name!r}: {self.root} exists and is "
                                     "not a directory", target=self.root, operation="create pool")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageHostError(f"create pool {self.pool.name!r}: {self.root} is not writable",
                                   target=self.root, operation="create pool", errno=errno.EACCES)
        return made

    def check_pool(self):
        if not os.path.isdir(self.root):
            raise StorageNotFoundError(f"pool {self.pool.name!r}: directory {self.root} is missing",
                                       target=self.root, operation="open pool")

    def remove_pool(self):
        try:
            shutil.rmtree(os.path.join(self.root, SNAPSHOT_DIR), ignore_errors=True)
            os.rmdir(self.root)
        except OSError as e:
            raise self._fail("destroy pool", self.root, e) from None

    def available(self):
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # -- volumes ------------------------------------------------------------------------------

    def volume_path(self, name, mount=True):
        return os.path.join(self.root, name)

    def _snapshot_path(self, name, snapshot):
        return os.path.join(self.root, SNAPSHOT_DIR, name, snapshot)

    def volume_exists(self, name):
        return os.path.lexists(self.volume_path(name))

    def create_volume(self, name, size):
        path = self.volume_path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise StorageExistsError(f"create volume {self.pool.name}/{name}: {path} exists already",
                                     target=path, operation="create volume") from None
        except OSError as e:
            raise self._fail("create volume", path, e) from None
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            os.unlink(path)
            raise self._fail("create volume", path, e) from None
        finally:
            os.close(fd)

    def delete_volume(self, name, snapshots=()):
        shutil.rmtree(os.path.join(self.root, SNAPSHOT_DIR, name), ignore_errors=True)
        try:
            os.unlink(self.volume_path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail("delete volume", self.volume_path(name), e) from None

    def volume_size(self, name):
        try:
            return os.stat(self.volume_path(name)).st_size
        except OSError as e:
            raise self._fail("stat volume", self.volume_path(name), e) from None

    def volume_allocation(self, name):
        try:
            return os.stat(self.volume_path(name)).st_blocks * 512
        except OSError as e:
            raise self._fail("stat volume", self.volume_path(name), e) from None

    def resize_volume(self, name, size):
        try:
            os.truncate(self.volume_path(name), size)
        except OSError as e:
            raise self._fail("resize volume", self.volume_path(name), e) from None

    # -- snapshots and clones -----------------------------------------------------------------

    def create_snapshot(self, name, snapshot, progress=None):
        directory = os.path.dirname(self._snapshot_path(name, snapshot))
        try:
            os.makedirs(directory, 0o700, exist_ok=True)
        except OSError as e:
            raise self._fail("snapshot", directory, e) from None
        return copy_file(self.volume_path(name), self._snapshot_path(name, snapshot),
                         progress=progress, operation=f"snapshot {self.pool.name}/{name}@{snapshot}")

    def delete_snapshot(self, name, snapshot):
        try:
            os.unlink(self._snapshot_path(name, snapshot))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail("delete snapshot", self._snapshot_path(name, snapshot), e) from None

    def _snapshot_source(self, operation, name, snapshot):
        source = self._snapshot_path(name, snapshot)
        if not os.path.exists(source):
            what = f"{self.pool.name}/{name}@{snapshot}"
            raise StorageNotFoundError(f"{operation} {what}: no such snapshot ({source} is missing)",
                                       target=what, operation=operation)
        return source

    def rollback(self, name, snapshot, progress=None):
        source = self._snapshot_source("rollback", name, snapshot)
        return copy_file(source, self.volume_path(name), replace=True, progress=progress,
                         operation=f"rollback {self.pool.name}/{name}@{snapshot}")

    def clone(self, name, snapshot, new_name, progress=None):
        source = self._snapshot_source("clone", name, snapshot)
        return copy_file(source, self.volume_path(new_name), progress=progress,
                         operation=f"clone {self.pool.name}/{name}@{snapshot} to {new_name}")

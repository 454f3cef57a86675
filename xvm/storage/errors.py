"""The storage errors: each names the object (``target``: a pool, volume, snapshot, path or ZFS
dataset) and the ``operation`` that failed, and sits under the :mod:`xvm.errors` branch that says
whose fault it is.

* :class:`StorageNotFoundError` (a :class:`~xvm.errors.NotFoundError`): no such pool, volume,
  snapshot, dataset or zpool.
* :class:`StorageExistsError` (a :class:`~xvm.errors.ConfigError`): the name is taken.
* :class:`StorageBusyError` (a :class:`~xvm.errors.StateError`): a running domain uses the volume,
  clones depend on it, later snapshots exist, or ZFS says the dataset is busy.
* :class:`StorageHostError` (a :class:`~xvm.errors.HostError`): the host failed (I/O error, no
  space, a zfs command failed otherwise); ``errno`` when one is known.
* :class:`ZfsDaemonError` (a :class:`StorageHostError`): ZFS is not reachable (zfs-fuse is not
  running, or no /dev/zfs).

In every case nothing was left half-done: an operation that fails undoes what it had made.
"""
import os

from ..errors import ConfigError, HostError, NotFoundError, StateError, XvmError


class StorageError(XvmError):
    """Base of every storage error; ``target`` and ``operation`` say what failed on what."""

    def __init__(self, message, *, target=None, operation=None):
        XvmError.__init__(self, message)
        self.target = target
        self.operation = operation

    def __str__(self):
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.args[0],), self.__dict__)


class StorageNotFoundError(StorageError, NotFoundError):
    """No such pool, volume, snapshot, ZFS dataset or zpool."""


class StorageExistsError(StorageError, ConfigError):
    """A pool, volume, snapshot or dataset of that name exists already."""


class StorageBusyError(StorageError, StateError):
    """The volume is in use by a domain, has dependent clones, or is busy on the host."""

    def __init__(self, message, *, target=None, operation=None, state="busy"):
        StorageError.__init__(self, message, target=target, operation=operation)
        self.state = state


class StorageHostError(StorageError, HostError):
    """A system call or a zfs command failed; ``errno`` says why when it is known."""

    def __init__(self, message, *, target=None, operation=None, errno=None):
        StorageError.__init__(self, message, target=target, operation=operation)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None

    def __reduce__(self):
        return (type(self), (self.args[0],), {**self.__dict__, "errno": self.errno,
                                              "strerror": self.strerror})


class ZfsDaemonError(StorageHostError):
    """ZFS cannot be reached: the zfs-fuse daemon is not running, or the host has no /dev/zfs."""


def _register():
    from ..vmm.protocol import register_error  # xvmd's replies recreate these classes

    for cls in (StorageError, StorageNotFoundError, StorageExistsError, StorageBusyError, StorageHostError,
                ZfsDaemonError):
        register_error(cls)


_register()

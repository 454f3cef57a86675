"""A ZFS pool: each volume is its own dataset ``DATASET/NAME``; snapshots and clones are ZFS
snapshots and clones of it (a clone depends on its origin snapshot).

Where the host has zvols (OpenZFS: /dev/zfs), a volume is a sparse zvol ``/dev/zvol/DATASET/NAME``.
Where it has none (Debian's zfs-fuse), a volume is a filesystem dataset holding one sparse file
``vol.img``, and its path is that file under the dataset's mountpoint.

Changes go through libzfs_core (:mod:`.lzc`) where it loads, else through zfs(8); listing,
properties, mounting and zpool checks always use zfs(8)/zpool(8) (libzfs_core has no calls for
them). Every failure names the operation and the dataset and says why: exists, no such dataset or
snapshot, busy, dependent clones, pool missing, daemon not running.
"""
import errno
import fcntl
import os
import shutil
import subprocess
import time

from ..errors import (StorageBusyError, StorageError, StorageExistsError, StorageHostError,
                      StorageNotFoundError, ZfsDaemonError)
from . import lzc as lzc_module

FILE_NAME = "vol.img"
COMMAND_TIMEOUT = 120.0
# A file just closed on a FUSE mount is released asynchronously: for a moment after close() the
# daemon still holds it, and an unmount (which destroy does) says "busy". Wait that long at most.
BUSY_WAIT = 3.0
ZVOL_WAIT = 10.0  # seconds for udev to make a new zvol's device node
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/sbin", "/usr/sbin", "/usr/local/sbin"])

# zfs(8)/zpool(8) messages (OpenZFS and zfs-fuse word them alike) and what they mean.
_DAEMON = ("failed to initialize zfs library", "zfs-fuse daemon is running", "/dev/zfs",
           "connect: connection refused", "connect: no such file or directory")
_MEANINGS = (  # (message, error, what it means, StorageBusyError.state)
    ("no such pool", StorageNotFoundError, "pool missing", None),
    ("dataset already exists", StorageExistsError, "exists already", None),
    ("dependent clones", StorageBusyError, "clones depend on it", "has clones"),
    ("more recent snapshots exist", StorageBusyError, "more recent snapshots exist", "later snapshots"),
    ("has children", StorageBusyError, "it has children", "has children"),
    ("is busy", StorageBusyError, "busy", "busy"),
    ("target is busy", StorageBusyError, "busy", "busy"),
    ("umount failed", StorageBusyError, "busy (cannot unmount)", "busy"),
    ("parent does not exist", StorageNotFoundError, "parent dataset does not exist", None),
    ("dataset does not exist", StorageNotFoundError, "no such dataset", None),
    ("could not find any snapshots", StorageNotFoundError, "no such snapshot", None),
    ("out of space", StorageHostError, "out of space", None),
)
_ERRNOS = {
    errno.EEXIST: (StorageExistsError, "exists already"),
    errno.ENOENT: (StorageNotFoundError, "no such dataset"),
    errno.EBUSY: (StorageBusyError, "busy"),
    errno.EXDEV: (StorageBusyError, "more recent snapshots exist"),
    errno.ENOSPC: (StorageHostError, "out of space"),
}


class ZfsCommands:
    """zfs(8) and zpool(8) as subprocesses: the fallback engine, and the listing/mounting one."""

    name = "zfs(8)"

    def __init__(self):
        self.zfs = shutil.which("zfs", path=_SEARCH_PATH)
        self.zpool = shutil.which("zpool", path=_SEARCH_PATH)

    def run(self, program, args, operation, target, *, busy_wait=0.0):
        deadline = time.monotonic() + busy_wait
        while True:
            try:
                return self._run(program, args, operation, target)
            except StorageBusyError as e:
                if e.state != "busy" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _run(self, program, args, operation, target):
        path = self.zfs if program == "zfs" else self.zpool
        if path is None:
            raise ZfsDaemonError(f"{program} {operation} {target}: {program}(8) is not installed "
                                 "(install zfs-fuse or OpenZFS)", target=target, operation=operation)
        try:
            done = subprocess.run([path, *args], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            raise StorageHostError(f"{program} {operation} {target}: no answer in "
                                   f"{COMMAND_TIMEOUT:g}s (is the ZFS daemon hung?)", target=target,
                                   operation=operation, errno=errno.ETIMEDOUT) from None
        if done.returncode != 0:
            raise command_error(program, operation, target, done.stderr, done.returncode)
        return done.stdout

    # the changing calls, the same shape as the libzfs_core engine's
    def create(self, dataset, *, volsize=None):
        args = ["create", dataset] if volsize is None else ["create", "-s", "-V", str(volsize), dataset]
        self.run("zfs", args, "create", dataset)

    def snapshot(self, snapshot):
        self.run("zfs", ["snapshot", snapshot], "snapshot", snapshot)

    def clone(self, dataset, origin):
        self.run("zfs", ["clone", origin, dataset], "clone", f"{origin} to {dataset}")

    def rollback_to(self, dataset, snapshot):
        self.run("zfs", ["rollback", snapshot], "rollback", snapshot)

    def destroy(self, dataset):
        self.run("zfs", ["destroy", dataset], "destroy", dataset, busy_wait=BUSY_WAIT)

    def exists(self, dataset):
        try:
            self.run("zfs", ["list", "-H", "-o", "name", dataset], "list", dataset)
        except StorageNotFoundError:
            return False
        return True

    # the calls libzfs_core has no equivalent for
    def get(self, dataset, *props):
        out = self.run("zfs", ["get", "-H", "-p", "-o", "property,value", ",".join(props), dataset],
                       "get", dataset)
        values = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        return [values.get(prop, "-") for prop in props]

    def set(self, dataset, prop, value):
        self.run("zfs", ["set", f"{prop}={value}", dataset], f"set {prop}", dataset)

    def mount(self, dataset):
        self.run("zfs", ["mount", dataset], "mount", dataset)

    def unmount(self, dataset):
        self.run("zfs", ["unmount", dataset], "unmount", dataset, busy_wait=BUSY_WAIT)

    def zpool_exists(self, zpool):
        try:
            self.run("zpool", ["list", "-H", "-o", "name", zpool], "list", zpool)
        except StorageNotFoundError:
            return False
        return True


def command_error(program, operation, target, stderr, returncode):
    """The StorageError for a failed zfs(8)/zpool(8) run, from its message; never a bare status."""
    text = " ".join(stderr.split())
    lowered = text.lower()
    if any(sign in lowered for sign in _DAEMON):
        return ZfsDaemonError(f"{program} {operation} {target}: the ZFS daemon is not running or "
                              f"not reachable ({text})", target=target, operation=operation,
                              errno=errno.ECONNREFUSED)
    for sign, cls, meaning, state in _MEANINGS:
        if sign in lowered:
            if meaning == "no such dataset" and "@" in target.split(" ")[0]:
                meaning = "no such snapshot"
            message = f"{program} {operation} {target}: {meaning} ({text})"
            if cls is StorageHostError:
                return cls(message, target=target, operation=operation, errno=errno.ENOSPC)
            if cls is StorageBusyError:
                return cls(message, target=target, operation=operation, state=state)
            return cls(message, target=target, operation=operation)
    return StorageHostError(f"{program} {operation} {target} failed (exit status {returncode}): "
                            f"{text or 'no message'}", target=target, operation=operation)


class Libzfs:
    """The libzfs_core engine: changes by lzc_* calls, the rest by zfs(8)."""

    name = "libzfs_core"

    def __init__(self, lzc, commands):
        self.lzc = lzc
        self.commands = commands

    def __getattr__(self, name):  # get, set, mount, unmount, zpool_exists, run
        return getattr(self.commands, name)

    def _call(self, operation, target, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except lzc_module.LzcError as e:
            cls, meaning = _ERRNOS.get(e.errno, (StorageHostError, os.strerror(e.errno)))
            if cls is StorageNotFoundError and "@" in target:
                meaning = "no such snapshot"
            message = f"{e.call} {operation} {target}: {meaning}"
            if cls is StorageBusyError:
                state = "later snapshots" if e.errno == errno.EXDEV else "busy"
                raise cls(message, target=target, operation=operation, state=state) from None
            if issubclass(cls, StorageHostError):
                raise cls(message, target=target, operation=operation, errno=e.errno) from None
            raise cls(message, target=target, operation=operation) from None

    def create(self, dataset, *, volsize=None):
        self._call("create", dataset, self.lzc.create, dataset, volsize=volsize)

    def snapshot(self, snapshot):
        self._call("snapshot", snapshot, self.lzc.snapshot, snapshot)

    def clone(self, dataset, origin):
        self._call("clone", f"{origin} to {dataset}", self.lzc.clone, dataset, origin)

    def rollback_to(self, dataset, snapshot):
        self._call("rollback", snapshot, self.lzc.rollback_to, dataset, snapshot)

    def destroy(self, dataset):
        self._call("destroy", dataset, self.lzc.destroy, dataset)

    def exists(self, dataset):
        return self.lzc.exists(dataset)


def default_engine():
    commands = ZfsCommands()
    lzc = lzc_module.load()
    return commands if lzc is None else Libzfs(lzc, commands)


class ZfsBackend:
    type = "zfs"
    clones_depend_on_origin = True

    def __init__(self, pool, engine=None, zvols=None):
        self.pool = pool
        self.root = pool.dataset
        self.zpool = pool.dataset.split("/")[0]
        self.engine = engine if engine is not None else default_engine()
        self.zvols = os.path.exists("/dev/zfs") if zvols is None else zvols
        kind = "zvols" if self.zvols else f"files ({FILE_NAME}) in datasets"
        self.description = f"ZFS dataset {self.root} through {self.engine.name}, volumes are {kind}"

    def dataset(self, name):
        return f"{self.root}/{name}"

    # -- the pool -----------------------------------------------------------------------------

    def open_pool(self):
        """Check the zpool and the dataset, creating the dataset if missing; True if it was made."""
        if not self.engine.zpool_exists(self.zpool):
            raise StorageNotFoundError(f"create pool {self.pool.name!r}: zpool {self.zpool!r} does not "
                                       "exist (pool missing)", target=self.zpool,
                                       operation="create pool")
        made = False
        if not self.engine.exists(self.root):
            self.engine.create(self.root)
            made = True
        try:
            self._check_root()
        except BaseException:
            if made:
                self._undo_create(self.root)
            raise
        return made

    def _check_root(self):
        kind, mountpoint = self.engine.get(self.root, "type", "mountpoint")
        if kind != "filesystem":
            raise StorageExistsError(f"create pool {self.pool.name!r}: {self.root} is a {kind}, not a "
                                     "filesystem dataset", target=self.root, operation="create pool")
        if not self.zvols and not mountpoint.startswith("/"):
            raise StorageHostError(f"create pool {self.pool.name!r}: {self.root} has mountpoint "
                                   f"{mountpoint!r}; file volumes need a mounted dataset",
                                   target=self.root, operation="create pool")
        if not self.zvols:
            self._mounted(self.root)

    def check_pool(self):
        if not self.engine.exists(self.root):
            raise StorageNotFoundError(f"pool {self.pool.name!r}: ZFS dataset {self.root} does not "
                                       "exist", target=self.root, operation="open pool")

    def remove_pool(self):
        self._destroy(self.root)

    def available(self):
        return int(self.engine.get(self.root, "available")[0])

    def _mounted(self, dataset):
        """The mountpoint of ``dataset``, mounting it first if needed (zfs-fuse after a restart)."""
        mounted, mountpoint = self.engine.get(dataset, "mounted", "mountpoint")
        if mounted != "yes":
            self.engine.mount(dataset)
        return mountpoint

    def _destroy(self, dataset):
        if not self.zvols and isinstance(self.engine, Libzfs) and "@" not in dataset:
            self.engine.unmount(dataset)  # lzc_destroy does not unmount
        self.engine.destroy(dataset)

    # -- volumes ------------------------------------------------------------------------------

    def volume_path(self, name, mount=True):
        if self.zvols:
            return f"/dev/zvol/{self.dataset(name)}"
        if mount:
            return os.path.join(self._mounted(self.dataset(name)), FILE_NAME)
        return os.path.join(self.engine.get(self.dataset(name), "mountpoint")[0], FILE_NAME)

    def volume_exists(self, name):
        return self.engine.exists(self.dataset(name))

    def create_volume(self, name, size):
        dataset = self.dataset(name)
        if self.zvols:
            self.engine.create(dataset, volsize=size)
            self._wait_device(dataset, "create volume")
            return
        self.engine.create(dataset)
        try:
            path = self.volume_path(name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            self._undo_create(dataset)
            raise StorageHostError(f"create volume {dataset}: cannot make {FILE_NAME}: {e.strerror}",
                                   target=dataset, operation="create volume", errno=e.errno) from None
        except BaseException:
            self._undo_create(dataset)
            raise

    def _wait_device(self, dataset, operation):
        """udev makes /dev/zvol/DATASET a moment after the zvol; undo the zvol if it never comes."""
        path = f"/dev/zvol/{dataset}"
        deadline = time.monotonic() + ZVOL_WAIT
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                self._undo_create(dataset)
                raise StorageHostError(f"{operation} {dataset}: {path} did not appear in "
                                       f"{ZVOL_WAIT:g}s (is udev running?)", target=dataset,
                                       operation=operation, errno=errno.ENODEV)
            time.sleep(0.05)

    def _undo_create(self, dataset):
        try:
            self._destroy(dataset)
        except Exception:
            pass  # the daemon may be gone; the dataset is then reported by the next create

    def delete_volume(self, name, snapshots=()):
        """Destroy the volume's dataset and its snapshots in one ``zfs destroy -r`` (libzfs_core
        has no recursive destroy), so a failure leaves the volume whole."""
        dataset = self.dataset(name)
        if self.engine.exists(dataset):
            self.engine.run("zfs", ["destroy", "-r", dataset], "destroy", dataset,
                            busy_wait=BUSY_WAIT)

    def volume_size(self, name):
        if self.zvols:
            return int(self.engine.get(self.dataset(name), "volsize")[0])
        path = self.volume_path(name)
        try:
            return os.stat(path).st_size
        except OSError as e:
            raise StorageHostError(f"stat volume {path}: {e.strerror}", target=path,
                                   operation="stat volume", errno=e.errno) from None

    def volume_allocation(self, name):
        return int(self.engine.get(self.dataset(name), "used")[0])

    def resize_volume(self, name, size):
        if self.zvols:
            self.engine.set(self.dataset(name), "volsize", size)
            return
        path = self.volume_path(name)
        try:
            os.truncate(path, size)
        except OSError as e:
            raise StorageHostError(f"resize volume {path}: {e.strerror}", target=path,
                                   operation="resize volume", errno=e.errno) from None

    # -- snapshots and clones -----------------------------------------------------------------

    def create_snapshot(self, name, snapshot, progress=None):
        self.engine.snapshot(f"{self.dataset(name)}@{snapshot}")
        return "zfs snapshot"

    def delete_snapshot(self, name, snapshot):
        self.engine.destroy(f"{self.dataset(name)}@{snapshot}")

    def rollback(self, name, snapshot, progress=None):
        if not self.zvols:
            self._wait_unlocked(name, "rollback")
        self.engine.rollback_to(self.dataset(name), f"{self.dataset(name)}@{snapshot}")
        return "zfs rollback"

    def _wait_unlocked(self, name, operation):
        """Wait until the last user's lock on a file volume is gone (the caller has checked that
        no domain uses it). On zfs-fuse a closed file's lock is dropped when its release reaches
        the daemon, a moment later; a rollback before that leaves the lock held for good."""
        try:
            fd = os.open(self.volume_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, StorageError):
            return  # the daemon is gone or the file is: the operation itself will say so
        try:
            deadline = time.monotonic() + BUSY_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)  # an explicit unlock reaches the daemon at once
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StorageBusyError(f"{operation} {self.dataset(name)}: busy (its "
                                               f"{FILE_NAME} is locked by another process)", target=self.dataset(name),
                                               operation=operation, state="busy") from None
                    time.sleep(0.05)
        finally:
            os.close(fd)

    def clone(self, name, snapshot, new_name, progress=None):
        self.engine.clone(self.dataset(new_name), f"{self.dataset(name)}@{snapshot}")
        if self.zvols:
            self._wait_device(self.dataset(new_name), "clone")
        else:
            try:
                self._mounted(self.dataset(new_name))
            except BaseException:
                self._undo_create(self.dataset(new_name))
                raise
        return "zfs clone"

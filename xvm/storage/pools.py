"""Pools and volumes: the catalog in the host's :class:`~xvm.store.Store`, the bytes in a backend.

The store keeps one ``"pool"`` object per pool (its :class:`~xvm.storage.config.Pool`, and whether
xvm made its directory or dataset) and one ``"volume"`` object per volume, named ``POOL/VOLUME``
(format, origin snapshot, how it was made, its snapshots). Sizes and allocations are read from the
backend. Every change checks first (names, the in-use callable, dependent clones), then changes the
backend, then records the result; if recording fails the backend change is undone.

``in_use(path) -> domain name or None`` tells which running domain has a volume open; volumes in
use cannot be deleted, rolled back, resized, or (in a directory pool, where a snapshot is a copy
that could be torn) snapshotted. A full copy (no reflink) shows a byte bar: ``progress=None`` a
tqdm bar in Jupyter or on a terminal and nothing otherwise, ``True`` a bar anyway, ``False`` none,
or a callable ``progress(copied_bytes, total_bytes)`` (:func:`xvm.progress.byte_reporter`).

One :class:`Pools` serializes its own changes; two processes changing the same volume at once
are not guarded against beyond what the backend refuses.
"""
import logging
import os
import threading
import time
from dataclasses import dataclass

from ..errors import ConfigError
from ..progress import byte_reporter
from .backend import backend_for
from .config import VOLUME_FORMATS, Pool, check_name, check_size
from .errors import StorageBusyError, StorageError, StorageExistsError, StorageNotFoundError

log = logging.getLogger(__name__)

POOL_KIND = "pool"
VOLUME_KIND = "volume"


def _no_domain(path):
    return None


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a volume: ``volume`` is "POOL/VOLUME"; ``method`` says how it was made."""

    volume: str
    name: str
    created: float
    method: str

    @property
    def key(self):
        return f"{self.volume}@{self.name}"


def split_key(key):
    """"POOL/VOLUME" -> (pool, volume), checked."""
    if not isinstance(key, str) or key.count("/") != 1:
        raise ConfigError(f"a volume is named 'POOL/VOLUME', not {key!r}")
    pool, volume = key.split("/")
    return check_name(pool, "pool name"), check_name(volume, "volume name")


class Pools:
    """The storage pools of one store. ``in_use(path)`` names the running domain using a path."""

    def __init__(self, store, in_use=None):
        self.store = store
        self.in_use = in_use if in_use is not None else _no_domain
        self._lock = threading.RLock()

    def create_pool(self, pool):
        """Define ``pool`` and make its directory or dataset if missing; a :class:`StoragePool`."""
        if not isinstance(pool, Pool):
            raise ConfigError(f"create_pool takes an xvm.Pool, not {type(pool).__name__}")
        with self._lock:
            for name, data in self.store.objects(POOL_KIND).items():
                other = Pool.from_dict(data["config"])
                if name == pool.name:
                    raise StorageExistsError(f"create pool {pool.name!r}: a pool of that name exists "
                                             f"({other.type}, {other.path or other.dataset})",
                                             target=pool.name, operation="create pool")
                if other.type == pool.type and (other.path, other.dataset) == (pool.path, pool.dataset):
                    raise StorageExistsError(f"create pool {pool.name!r}: {pool.path or pool.dataset} "
                                             f"is pool {name!r} already", target=pool.name,
                                             operation="create pool")
            backend = backend_for(pool)
            made = backend.open_pool()
            try:
                self.store.put_object(POOL_KIND, pool.name, {"config": pool.to_dict(), "made": made,
                                                             "created": time.time()})
            except BaseException:
                if made:
                    backend.remove_pool()
                raise
            log.info("pool %s created: %s", pool.name, backend.description)
            return StoragePool(self, pool, backend)

    def pools(self):
        return [StoragePool(self, Pool.from_dict(data["config"]))
                for data in self.store.objects(POOL_KIND).values()]

    def lookup_pool(self, name):
        check_name(name, "pool name")
        data = self.store.object(POOL_KIND, name)
        if data is None:
            raise StorageNotFoundError(f"no storage pool named {name!r}", target=name,
                                       operation="lookup pool")
        return StoragePool(self, Pool.from_dict(data["config"]))

    def lookup_volume(self, key):
        """The volume "POOL/VOLUME"."""
        pool, volume = split_key(key)
        return self.lookup_pool(pool).lookup_volume(volume)

    def volume_at(self, path):
        """The volume whose path is ``path``, or None."""
        path = os.path.realpath(path)
        for pool in self.pools():
            for volume in pool.volumes():
                if os.path.realpath(volume.path) == path:
                    return volume
        return None

    def user(self, path):
        """The name of the running domain using ``path``, or None."""
        return self.in_use(path)


def resolve_volume(store, key):
    """The host path of the volume "POOL/VOLUME" (mounting its dataset if needed), for a start."""
    volume = Pools(store).lookup_volume(key)
    path = volume.path
    if not os.path.exists(path):
        raise StorageNotFoundError(f"volume {key}: its data {path} is missing", target=key,
                                   operation="resolve volume")
    return path


class StoragePool:
    """A defined pool: make, list and look up its volumes; destroy it."""

    def __init__(self, pools, config, backend=None):
        self.pools = pools
        self.config = config
        self.backend = backend if backend is not None else backend_for(config)

    name = property(lambda self: self.config.name)
    type = property(lambda self: self.config.type)

    def __repr__(self):
        return f"<StoragePool {self.name} {self.backend.description}>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's display: the pool and a table of its volumes (xvm.display)."""
        from ..display import pool_bundle

        return pool_bundle(self, include, exclude)

    def __eq__(self, other):
        return isinstance(other, StoragePool) and other.config == self.config

    def __hash__(self):
        return hash(self.config)

    @property
    def available(self):
        """Bytes free for new data."""
        return self.backend.available()

    def _key(self, volume):
        return f"{self.name}/{volume}"

    def _record(self, volume):
        return self.pools.store.object(VOLUME_KIND, self._key(volume))

    def _records(self):
        prefix = f"{self.name}/"
        return {key[len(prefix):]: data for key, data in self.pools.store.objects(VOLUME_KIND).items()
                if key.startswith(prefix)}

    def _check_defined(self, operation):
        if self.pools.store.object(POOL_KIND, self.name) is None:
            raise StorageNotFoundError(f"{operation}: pool {self.name!r} is not defined (destroyed?)",
                                       target=self.name, operation=operation)

    def create_volume(self, name, size_bytes, format="raw"):
        """A new sparse volume of ``size_bytes`` (a multiple of 512)."""
        check_name(name, "volume name")
        check_size(size_bytes)
        if format not in VOLUME_FORMATS:
            raise ConfigError(f"volume format {format!r} is not supported (only "
                              f"{', '.join(VOLUME_FORMATS)})")
        with self.pools._lock:
            self._check_defined("create volume")
            if self._record(name) is not None:
                raise StorageExistsError(f"create volume {self._key(name)}: a volume of that name "
                                         "exists", target=self._key(name), operation="create volume")
            self.backend.create_volume(name, size_bytes)
            self._record_new(name, format=format, origin=None, method=None)
            return Volume(self, name)

    def _record_new(self, name, *, format, origin, method):
        try:
            self.pools.store.put_object(VOLUME_KIND, self._key(name), {
                "pool": self.name, "name": name, "format": format, "origin": origin,
                "method": method, "created": time.time(), "snapshots": []})
        except BaseException:
            self.backend.delete_volume(name)
            raise

    def volumes(self):
        return [Volume(self, name) for name in self._records()]

    def lookup_volume(self, name):
        check_name(name, "volume name")
        if self._record(name) is None:
            raise StorageNotFoundError(f"no volume {self._key(name)}", target=self._key(name),
                                       operation="lookup volume")
        return Volume(self, name)

    def destroy(self, delete_volumes=True):
        """Forget the pool; with ``delete_volumes`` (the default) delete its volumes and snapshots
        and the directory or dataset if xvm made it. Refused, with nothing changed, while any of
        its volumes is in use."""
        with self.pools._lock:
            self._check_defined("destroy pool")
            volumes = self.volumes()
            for volume in volumes:
                volume._refuse_in_use("destroy pool")
            remaining = {volume.name: volume for volume in volumes}
            while remaining:  # clones before their origins
                origins = {(volume._data().get("origin") or "@").split("@")[0]
                           for volume in remaining.values()}
                leaves = ([v for n, v in remaining.items() if n not in origins]
                          or list(remaining.values()))
                for volume in leaves:
                    if delete_volumes:
                        self.backend.delete_volume(volume.name, [s.name for s in volume.snapshots()])
                    self.pools.store.remove_object(VOLUME_KIND, volume.key)
                    del remaining[volume.name]
            data = self.pools.store.object(POOL_KIND, self.name)
            if delete_volumes and data.get("made"):
                try:
                    self.backend.remove_pool()
                except StorageError as e:
                    log.warning("pool %s: leaving its %s: %s", self.name, self.backend.description, e)
            self.pools.store.remove_object(POOL_KIND, self.name)


class Volume:
    """One volume of a pool; reads its state from the store and the backend on each access."""

    def __init__(self, pool, name):
        self.pool = pool
        self.name = name

    def __repr__(self):
        return f"<Volume {self.key}>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's display: sizes, origin, user, snapshots and clones (xvm.display)."""
        from ..display import volume_bundle

        return volume_bundle(self, include, exclude)

    def __eq__(self, other):
        return isinstance(other, Volume) and other.key == self.key

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self):
        """"POOL/VOLUME", the name ``xvm.Disk(volume=...)`` takes."""
        return f"{self.pool.name}/{self.name}"

    def _data(self):
        data = self.pool._record(self.name)
        if data is None:
            raise StorageNotFoundError(f"no volume {self.key} (deleted?)", target=self.key,
                                       operation="lookup volume")
        return data

    @property
    def path(self):
        """The host path a Disk opens: a file, or a zvol device."""
        return self.pool.backend.volume_path(self.name)

    @property
    def size(self):
        return self.pool.backend.volume_size(self.name)

    @property
    def allocation(self):
        """Bytes of host storage the volume uses (its snapshots included on ZFS)."""
        return self.pool.backend.volume_allocation(self.name)

    format = property(lambda self: self._data()["format"])
    created = property(lambda self: self._data()["created"])

    @property
    def origin(self):
        """"POOL/VOLUME@SNAPSHOT" this volume was cloned from, or None."""
        origin = self._data()["origin"]
        return None if origin is None else f"{self.pool.name}/{origin}"

    @property
    def method(self):
        """How the volume's data was made: None (created empty), "reflink", "copy", "zfs clone"."""
        return self._data()["method"]

    def user(self):
        """The name of the running domain that has this volume as a disk, or None."""
        return self.pool.pools.user(self.pool.backend.volume_path(self.name, mount=False))

    def _refuse_in_use(self, operation):
        user = self.user()
        if user is not None:
            raise StorageBusyError(f"{operation} {self.key}: in use by running domain {user!r}",
                                   target=self.key, operation=operation, state="in use")

    def _change(self, update):
        data = self._data()
        update(data)
        self.pool.pools.store.put_object(VOLUME_KIND, self.key, data)

    # -- size ---------------------------------------------------------------------------------

    def resize(self, size, *, shrink=False):
        """Grow to ``size`` bytes; shrinking (which loses the end) needs ``shrink=True``."""
        check_size(size)
        with self.pool.pools._lock:
            self._data()
            self._refuse_in_use("resize")
            current = self.size
            if size < current and not shrink:
                raise ConfigError(f"resize {self.key}: {size} is smaller than {current}; pass "
                                  "shrink=True to cut the end of the volume off")
            self.pool.backend.resize_volume(self.name, size)

    # -- deletion -----------------------------------------------------------------------------

    def dependents(self):
        """The volumes that are clones of this volume's snapshots (in any case, on any backend)."""
        prefix = f"{self.name}@"
        return [Volume(self.pool, name) for name, data in self.pool._records().items()
                if (data.get("origin") or "").startswith(prefix)]

    def _refuse_dependents(self, operation, snapshot=None):
        if not self.pool.backend.clones_depend_on_origin:
            return
        clones = [v for v in self.dependents()
                  if snapshot is None or v._data()["origin"] == f"{self.name}@{snapshot}"]
        if clones:
            what = self.key if snapshot is None else f"{self.key}@{snapshot}"
            raise StorageBusyError(f"{operation} {what}: clones depend on it: "
                                   f"{', '.join(v.key for v in clones)}", target=what,
                                   operation=operation, state="has clones")

    def delete(self):
        """Delete the volume and its snapshots; refused while in use or while clones depend on it."""
        with self.pool.pools._lock:
            snapshots = [s.name for s in self.snapshots()]
            self._refuse_dependents("delete")
            self._refuse_in_use("delete")
            self.pool.backend.delete_volume(self.name, snapshots)
            self.pool.pools.store.remove_object(VOLUME_KIND, self.key)

    # -- snapshots ----------------------------------------------------------------------------

    def snapshots(self):
        """Oldest first."""
        return [Snapshot(self.key, s["name"], s["created"], s["method"])
                for s in self._data()["snapshots"]]

    def lookup_snapshot(self, name):
        check_name(name, "snapshot name")
        for snapshot in self.snapshots():
            if snapshot.name == name:
                return snapshot
        raise StorageNotFoundError(f"volume {self.key} has no snapshot {name!r}",
                                   target=f"{self.key}@{name}", operation="lookup snapshot")

    def snapshot(self, name, *, progress=None):
        """Take snapshot ``name``; a :class:`Snapshot` whose ``method`` says how ("reflink", "copy",
        "zfs snapshot"). A full copy shows a byte bar (``progress``: see the module docstring)."""
        check_name(name, "snapshot name")
        with self.pool.pools._lock:
            if any(s.name == name for s in self.snapshots()):
                raise StorageExistsError(f"snapshot {self.key}@{name}: exists already",
                                         target=f"{self.key}@{name}", operation="snapshot")
            if not self.pool.backend.clones_depend_on_origin:
                self._refuse_in_use("snapshot")
            with byte_reporter(progress, f"snapshot {self.key}@{name}") as report:
                method = self.pool.backend.create_snapshot(self.name, name, report)
            if method == "copy":
                log.info("snapshot %s@%s: the filesystem has no reflinks, made a full copy",
                         self.key, name)
            entry = {"name": name, "created": time.time(), "method": method}
            try:
                self._change(lambda data: data["snapshots"].append(entry))
            except BaseException:
                self.pool.backend.delete_snapshot(self.name, name)
                raise
            return Snapshot(self.key, name, entry["created"], method)

    def delete_snapshot(self, name):
        """Delete snapshot ``name``; refused while clones depend on it."""
        with self.pool.pools._lock:
            self.lookup_snapshot(name)
            self._refuse_dependents("delete snapshot", name)
            self.pool.backend.delete_snapshot(self.name, name)
            self._change(lambda data: data.__setitem__(
                "snapshots", [s for s in data["snapshots"] if s["name"] != name]))

    def rollback(self, name, *, progress=None):
        """Put the volume back to snapshot ``name``, its latest; refused while in use. Returns how
        ("reflink", "copy", "zfs rollback"); a copy shows a bar (``progress``: the module docstring)."""
        with self.pool.pools._lock:
            snapshots = self.snapshots()
            self.lookup_snapshot(name)
            later = [s.name for s in snapshots[[s.name for s in snapshots].index(name) + 1:]]
            if later:
                raise StorageBusyError(f"rollback {self.key}@{name}: more recent snapshots exist "
                                       f"({', '.join(later)}); delete them first",
                                       target=f"{self.key}@{name}", operation="rollback",
                                       state="later snapshots")
            self._refuse_in_use("rollback")
            with byte_reporter(progress, f"rollback {self.key}@{name}") as report:
                return self.pool.backend.rollback(self.name, name, report)

    def clone(self, snapshot, new_name, *, progress=None):
        """A new volume ``new_name`` in this pool with the data of snapshot ``snapshot``; its
        ``method`` says how it was made ("reflink", "copy", "zfs clone"); a copy shows a bar
        (``progress``: the module docstring)."""
        check_name(new_name, "volume name")
        with self.pool.pools._lock:
            self.lookup_snapshot(snapshot)
            if self.pool._record(new_name) is not None:
                raise StorageExistsError(f"clone {self.key}@{snapshot}: volume {self.pool.name}/"
                                         f"{new_name} exists already",
                                         target=f"{self.pool.name}/{new_name}", operation="clone")
            with byte_reporter(progress, f"clone {self.key}@{snapshot} to {new_name}") as report:
                method = self.pool.backend.clone(self.name, snapshot, new_name, report)
            if method == "copy":
                log.info("clone %s@%s to %s: the filesystem has no reflinks, made a full copy",
                         self.key, snapshot, new_name)
            self.pool._record_new(new_name, format=self.format, origin=f"{self.name}@{snapshot}",
                                  method=method)
            return Volume(self.pool, new_name)

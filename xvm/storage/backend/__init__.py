"""Where a pool's volumes live. A backend is one object per pool with a small protocol:

* ``type``, ``description``, ``clones_depend_on_origin`` (True when a clone shares its origin's
  blocks and so keeps the origin from being deleted);
* the pool: ``open_pool() -> made`` (check it, make the directory/dataset if missing),
  ``check_pool()``, ``remove_pool()``, ``available()``;
* volumes by name: ``volume_path(name, mount=True)``, ``volume_exists``, ``create_volume(name,
  size)`` (sparse), ``delete_volume(name, snapshots)``, ``volume_size``, ``volume_allocation``,
  ``resize_volume(name, size)``;
* snapshots: ``create_snapshot(name, snap, progress)``, ``delete_snapshot``, ``rollback(name, snap,
  progress)``, ``clone(name, snap, new_name, progress)``; the first, third and fourth return how
  the data was made ("reflink", "copy", "zfs snapshot", "zfs rollback", "zfs clone").

Failures are :mod:`xvm.storage.errors`, and leave nothing half-made. New backends are one file.
"""
from .dir import DirBackend
from .zfs import ZfsBackend

BACKENDS = {"dir": DirBackend, "zfs": ZfsBackend}


def backend_for(pool):
    return BACKENDS[pool.type](pool)


__all__ = ["BACKENDS", "DirBackend", "ZfsBackend", "backend_for"]

"""Operations on all the disks of one domain at once, all or nothing: the helpers under
``host.clone_domain``, ``dom.snapshot_disks`` and ``dom.rollback_disks``.

A disk is given as a :class:`~xvm.storage.pools.Volume`, a "POOL/VOLUME" name, or the host path of
a volume (a disk that is a plain file outside every pool cannot be snapshotted or cloned here).
"""
import os

from ..errors import ConfigError
from .config import check_name
from .errors import StorageError
from .pools import Volume


def volume_of(pools, disk):
    """The :class:`Volume` a disk names (a Volume, "POOL/VOLUME" or a volume's path)."""
    if isinstance(disk, Volume):
        return disk
    if isinstance(disk, str) and not os.path.isabs(disk):
        return pools.lookup_volume(disk)
    if isinstance(disk, (str, os.PathLike)):
        volume = pools.volume_at(os.fspath(disk))
        if volume is None:
            raise ConfigError(f"disk {os.fspath(disk)} is not a volume of any storage pool: only "
                              "pool volumes can be snapshotted, rolled back or cloned")
        return volume
    raise ConfigError(f"a disk is a Volume, 'POOL/VOLUME' or a path, not {type(disk).__name__}")


def snapshot_disks(pools, disks, name, *, progress=None):
    """Snapshot every disk as ``name``; if one fails, the snapshots already taken are deleted."""
    volumes = [volume_of(pools, disk) for disk in disks]
    check_name(name, "snapshot name")
    taken = []
    try:
        for volume in volumes:
            taken.append(volume.snapshot(name, progress=progress))
    except BaseException:
        for volume in volumes[:len(taken)]:
            _quietly(volume.delete_snapshot, name)
        raise
    return taken


def rollback_disks(pools, disks, name, *, progress=None):
    """Roll every disk back to snapshot ``name``. Every disk is checked first (the snapshot exists
    and is its latest, the disk is not in use), so a refusal changes nothing."""
    volumes = [volume_of(pools, disk) for disk in disks]
    for volume in volumes:
        snapshots = [s.name for s in volume.snapshots()]
        volume.lookup_snapshot(name)
        if snapshots[-1] != name:
            volume.rollback(name)  # raises the "more recent snapshots" refusal
        volume._refuse_in_use("rollback")
    return [volume.rollback(name, progress=progress) for volume in volumes]


def clone_disks(pools, disks, snapshot, new_prefix, *, names=None, progress=None):
    """Clone every disk at ``snapshot`` into its own pool as "NEW_PREFIX-VOLUME" (or as
    ``names[i]``); the new :class:`Volume` list, in the disks' order. If one clone fails, the ones
    made are deleted."""
    volumes = [volume_of(pools, disk) for disk in disks]
    if names is None:
        names = [f"{new_prefix}-{volume.name}" for volume in volumes]
    elif len(names) != len(volumes):
        raise ConfigError(f"clone_disks: {len(names)} names for {len(volumes)} disks")
    for name in names:
        check_name(name, "clone volume name")
    for volume in volumes:
        volume.lookup_snapshot(snapshot)
    clones = []
    try:
        for volume, name in zip(volumes, names):
            clones.append(volume.clone(snapshot, name, progress=progress))
    except BaseException:
        for clone in reversed(clones):
            _quietly(clone.delete)
        raise
    return clones


def _quietly(action, *args):
    try:
        action(*args)
    except StorageError:
        pass  # undoing after a failure: the original error is the one to report

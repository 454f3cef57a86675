"""Storage pools and volumes: directory pools (raw sparse files, reflink or copy snapshots) and
ZFS pools (a dataset per volume; ZFS snapshots, rollback and clones).

    pools = Pools(store, in_use=lambda path: ...)   # in_use names the domain using a path
    pool = pools.create_pool(Pool("fast", type="zfs", dataset="tank/xvm"))
    golden = pool.create_volume("golden", 1 << 30)
    golden.snapshot("installed")
    web1 = golden.clone("installed", "web1")        # xvm.Disk(volume="fast/web1")
"""
from .config import Pool
from .errors import (StorageBusyError, StorageError, StorageExistsError, StorageHostError,
                     StorageNotFoundError, ZfsDaemonError)
from .pools import Pools, Snapshot, StoragePool, Volume, resolve_volume
from .provision import clone_disks, rollback_disks, snapshot_disks, volume_of

__all__ = [
    "Pool", "Pools", "Snapshot", "StorageBusyError", "StorageError", "StorageExistsError",
    "StorageHostError", "StorageNotFoundError", "StoragePool", "Volume", "ZfsDaemonError",
    "clone_disks", "resolve_volume", "rollback_disks", "snapshot_disks", "volume_of",
]

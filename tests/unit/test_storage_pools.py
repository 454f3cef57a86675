"""xvm.storage: every pool and volume operation, the same tests on both backends.

Real files in a temporary directory for ``dir``; a real zfs-fuse zpool on a sparse file in /tmp
for ``zfs`` (started by the ``zpool`` fixture, skipped only if zfs-fuse cannot run here). The
in-use callable is a dict of path -> domain name the tests fill.
"""
import itertools
import os

import pytest

from xvm.errors import ConfigError, NotFoundError, StateError
from xvm.storage import (Pool, Pools, StorageBusyError, StorageExistsError, StorageNotFoundError,
                         clone_disks, resolve_volume, rollback_disks, snapshot_disks)
from xvm.storage import zfsfuse
from xvm.store import Store

MiB = 1 << 20
_counter = itertools.count()


@pytest.fixture(scope="module")
def zpool():
    test_pool = zfsfuse.TestZpool()
    try:
        test_pool.__enter__()
    except zfsfuse.ZfsFuseUnavailable as e:
        pytest.skip(f"zfs-fuse cannot be used here: {e}")
    yield test_pool
    test_pool.__exit__(None, None, None)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "domains.db") as s:
        yield s


@pytest.fixture
def users():
    """path -> name of the running domain using it: what the host's in_use callable answers."""
    return {}


@pytest.fixture
def pools(store, users):
    return Pools(store, in_use=lambda path: users.get(os.path.realpath(path)))


def pool_config(kind, request, tmp_path, name="p"):
    if kind == "dir":
        return Pool(name, type="dir", path=str(tmp_path / f"pool-{name}"))
    zpool = request.getfixturevalue("zpool")
    return Pool(name, type="zfs", dataset=f"{zpool.name}/t{next(_counter)}")


@pytest.fixture(params=["dir", "zfs"])
def pool(request, tmp_path, pools, users):
    made = pools.create_pool(pool_config(request.param, request, tmp_path))
    yield made
    users.clear()
    if pools.store.object("pool", made.name) is not None:
        made.destroy()


def write(volume, data, offset=0):
    with open(volume.path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read(volume, length, offset=0):
    with open(volume.path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def pattern(tag, length=64 * 1024):
    return (tag.encode() * (length // len(tag) + 1))[:length]


def use(users, volume, domain):
    users[os.path.realpath(volume.path)] = domain


# -- pools --------------------------------------------------------------------------------------

def test_a_pool_is_stored_and_found_again(pool, pools, store):
    assert pools.pools() == [pool]
    assert pools.lookup_pool("p") == pool
    assert store.object("pool", "p")["config"] == pool.config.to_dict()
    assert Pools(Store(store.path)).lookup_pool("p").config == pool.config
    assert pool.available > 0


def test_duplicate_pools_are_refused(pool, pools, request, tmp_path):
    with pytest.raises(StorageExistsError, match="'p'.*exists") as e:
        pools.create_pool(pool_config(pool.type, request, tmp_path))
    assert isinstance(e.value, ConfigError)
    with pytest.raises(StorageExistsError, match="is pool 'p' already"):
        pools.create_pool(Pool("q", type=pool.type, path=pool.config.path, dataset=pool.config.dataset))
    assert [p.name for p in pools.pools()] == ["p"]


def test_a_missing_pool_is_an_error(pools, tmp_path):
    with pytest.raises(StorageNotFoundError, match="no storage pool named 'nope'") as e:
        pools.lookup_pool("nope")
    assert isinstance(e.value, NotFoundError)
    with pytest.raises(StorageNotFoundError, match="no storage pool named 'nope'"):
        pools.lookup_volume("nope/v")
    with pytest.raises(StorageNotFoundError, match="parent of .* does not exist"):
        pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "no" / "such")))
    assert pools.pools() == []


def test_a_missing_zpool_is_named(pools, zpool):
    with pytest.raises(StorageNotFoundError, match="zpool 'xvmnosuchpool' does not exist"):
        pools.create_pool(Pool("z", type="zfs", dataset="xvmnosuchpool/xvm"))
    assert pools.pools() == []


# -- volumes ------------------------------------------------------------------------------------

def test_create_a_sparse_volume(pool, store):
    volume = pool.create_volume("v", 64 * MiB)
    assert volume.key == "p/v"
    assert volume.size == 64 * MiB
    assert os.path.getsize(volume.path) == 64 * MiB
    assert volume.allocation < 2 * MiB  # sparse
    assert (volume.format, volume.origin, volume.method) == ("raw", None, None)
    assert pool.volumes() == [volume]
    assert pool.lookup_volume("v") == volume
    assert read(volume, 4096) == bytes(4096)
    assert store.object("volume", "p/v")["pool"] == "p"
    assert resolve_volume(store, "p/v") == volume.path


def test_volume_arguments_are_checked(pool):
    for name in ("", "-x", "a/b", "a@b", "a b", "x" * 65):
        with pytest.raises(ConfigError, match="volume name"):
            pool.create_volume(name, MiB)
    for size in (0, -512, 1000, 1.5, True, "1M"):
        with pytest.raises(ConfigError, match="volume size"):
            pool.create_volume("v", size)
    with pytest.raises(ConfigError, match="format 'qcow2' is not supported"):
        pool.create_volume("v", MiB, format="qcow2")
    assert pool.volumes() == []


def test_duplicate_volumes_are_refused(pool):
    volume = pool.create_volume("v", MiB)
    write(volume, b"keep")
    with pytest.raises(StorageExistsError, match="p/v: a volume of that name exists"):
        pool.create_volume("v", 2 * MiB)
    assert volume.size == MiB and read(volume, 4) == b"keep"


def test_lookup_of_a_missing_volume(pool, store):
    with pytest.raises(StorageNotFoundError, match="no volume p/nope"):
        pool.lookup_volume("nope")
    with pytest.raises(StorageNotFoundError, match="no volume p/nope"):
        resolve_volume(store, "p/nope")
    with pytest.raises(ConfigError, match="'POOL/VOLUME'"):
        resolve_volume(store, "nope")


def test_resize(pool, users):
    volume = pool.create_volume("v", MiB)
    write(volume, b"data")
    volume.resize(8 * MiB)
    assert volume.size == 8 * MiB and read(volume, 4) == b"data"
    with pytest.raises(ConfigError, match="shrink=True"):
        volume.resize(MiB)
    assert volume.size == 8 * MiB
    volume.resize(2 * MiB, shrink=True)
    assert volume.size == 2 * MiB
    use(users, volume, "web")
    with pytest.raises(StorageBusyError, match="resize p/v: in use by running domain 'web'"):
        volume.resize(4 * MiB)
    assert volume.size == 2 * MiB


def test_delete(pool, store):
    volume = pool.create_volume("v", MiB)
    volume.snapshot("s")
    path = volume.path
    volume.delete()
    assert not os.path.exists(path)
    assert pool.volumes() == [] and store.objects("volume") == {}
    with pytest.raises(StorageNotFoundError):
        volume.size
    pool.create_volume("v", MiB).snapshot("s")  # the name and its snapshot name are free again


def test_delete_is_refused_while_in_use(pool, users):
    volume = pool.create_volume("v", MiB)
    write(volume, b"live")
    use(users, volume, "db")
    with pytest.raises(StorageBusyError, match="delete p/v: in use by running domain 'db'") as e:
        volume.delete()
    assert isinstance(e.value, StateError) and e.value.state == "in use"
    assert read(volume, 4) == b"live" and pool.volumes() == [volume]


# -- snapshots ----------------------------------------------------------------------------------

def test_snapshot_and_rollback(pool):
    volume = pool.create_volume("v", 4 * MiB)
    golden = pattern("golden")
    write(volume, golden, MiB)
    snapshot = volume.snapshot("s1")
    assert (snapshot.volume, snapshot.name, snapshot.key) == ("p/v", "s1", "p/v@s1")
    assert snapshot.method in ("reflink", "copy", "zfs snapshot")
    write(volume, pattern("overwritten"), MiB)
    volume.resize(8 * MiB)
    assert read(volume, len(golden), MiB) != golden
    method = volume.rollback("s1")
    assert method in ("reflink", "copy", "zfs rollback")
    assert read(volume, len(golden), MiB) == golden
    assert volume.size == 4 * MiB
    assert volume.snapshots() == [snapshot]
    assert volume.lookup_snapshot("s1") == snapshot


def test_snapshot_refusals(pool, users):
    volume = pool.create_volume("v", MiB)
    volume.snapshot("s1")
    with pytest.raises(StorageExistsError, match="snapshot p/v@s1: exists already"):
        volume.snapshot("s1")
    with pytest.raises(StorageNotFoundError, match="p/v has no snapshot 'nope'"):
        volume.rollback("nope")
    with pytest.raises(ConfigError, match="snapshot name"):
        volume.snapshot("a@b")
    volume.snapshot("s2")
    with pytest.raises(StorageBusyError, match=r"more recent snapshots exist \(s2\)"):
        volume.rollback("s1")
    use(users, volume, "web")
    with pytest.raises(StorageBusyError, match="rollback p/v: in use by running domain 'web'"):
        volume.rollback("s2")
    users.clear()
    volume.delete_snapshot("s2")
    volume.rollback("s1")
    assert [s.name for s in volume.snapshots()] == ["s1"]


def test_snapshot_of_a_volume_in_use(pool, users):
    """ZFS snapshots are atomic (crash-consistent); a directory pool's copy could be torn."""
    volume = pool.create_volume("v", MiB)
    use(users, volume, "web")
    if pool.type == "zfs":
        assert volume.snapshot("live").method == "zfs snapshot"
    else:
        with pytest.raises(StorageBusyError, match="snapshot p/v: in use by running domain 'web'"):
            volume.snapshot("live")
        assert volume.snapshots() == []


# -- clones -------------------------------------------------------------------------------------

def test_clone_has_the_snapshot_data_and_its_own_writes(pool):
    golden = pool.create_volume("golden", 4 * MiB)
    write(golden, pattern("golden"))
    golden.snapshot("installed")
    write(golden, pattern("after the snapshot"))
    clone = golden.clone("installed", "web1")
    assert clone.origin == "p/golden@installed"
    assert clone.method in ("reflink", "copy", "zfs clone")
    assert clone.size == 4 * MiB
    assert read(clone, 64 * 1024) == pattern("golden")
    write(clone, pattern("web1"))
    assert read(golden, 64 * 1024) == pattern("after the snapshot")
    assert read(clone, 64 * 1024) == pattern("web1")
    assert golden.dependents() == [clone]
    assert sorted(v.name for v in pool.volumes()) == ["golden", "web1"]


def test_clone_refusals(pool):
    golden = pool.create_volume("golden", MiB)
    golden.snapshot("s")
    pool.create_volume("taken", MiB)
    with pytest.raises(StorageExistsError, match="volume p/taken exists already"):
        golden.clone("s", "taken")
    with pytest.raises(StorageNotFoundError, match="no snapshot 'nope'"):
        golden.clone("nope", "new")
    assert sorted(v.name for v in pool.volumes()) == ["golden", "taken"]


def test_delete_with_dependent_clones(pool):
    golden = pool.create_volume("golden", MiB)
    write(golden, b"gold")
    golden.snapshot("s")
    clone = golden.clone("s", "c")
    if pool.backend.clones_depend_on_origin:  # a ZFS clone shares its origin's blocks
        with pytest.raises(StorageBusyError, match="delete p/golden: clones depend on it: p/c"):
            golden.delete()
        with pytest.raises(StorageBusyError, match="delete snapshot p/golden@s: clones depend on it"):
            golden.delete_snapshot("s")
        assert read(golden, 4) == b"gold" and [s.name for s in golden.snapshots()] == ["s"]
        clone.delete()
        golden.delete()
    else:  # a reflinked or copied file is independent of its origin
        golden.delete()
        assert read(clone, 4) == b"gold"
    assert [v.name for v in pool.volumes()] == ([] if pool.backend.clones_depend_on_origin else ["c"])


def test_twenty_clones_from_one_golden_snapshot(pool):
    golden = pool.create_volume("golden", 2 * MiB)
    write(golden, pattern("golden"))
    golden.snapshot("golden")
    clones = [golden.clone("golden", f"vm{i}") for i in range(20)]
    for i, clone in enumerate(clones):
        assert read(clone, 64 * 1024) == pattern("golden")
        write(clone, pattern(f"vm{i}"))
    for i, clone in enumerate(clones):
        assert read(clone, 64 * 1024) == pattern(f"vm{i}")
    assert read(golden, 64 * 1024) == pattern("golden")
    assert len({c.path for c in clones}) == 20


# -- pool destruction ---------------------------------------------------------------------------

def test_destroy_a_pool_with_volumes_and_clones(pool, pools, store):
    golden = pool.create_volume("golden", MiB)
    golden.snapshot("s")
    golden.clone("s", "c1").snapshot("t")
    golden.clone("s", "c2")
    paths = [v.path for v in pool.volumes()]
    pool.destroy()
    assert pools.pools() == [] and store.objects("volume") == {}
    assert not any(os.path.exists(path) for path in paths)
    if pool.type == "dir":
        assert not os.path.exists(pool.config.path)
    else:
        assert not pool.backend.engine.exists(pool.config.dataset)
    with pytest.raises(StorageNotFoundError, match="is not defined"):
        pool.create_volume("v", MiB)


def test_destroy_is_refused_while_a_volume_is_in_use(pool, pools, users):
    pool.create_volume("idle", MiB)
    busy = pool.create_volume("busy", MiB)
    use(users, busy, "web")
    with pytest.raises(StorageBusyError, match="destroy pool p/busy: in use by running domain 'web'"):
        pool.destroy()
    assert sorted(v.name for v in pool.volumes()) == ["busy", "idle"]
    assert all(os.path.exists(v.path) for v in pool.volumes())
    assert pools.lookup_pool("p") == pool


def test_destroy_without_deleting_volumes_keeps_the_data(pool, pools):
    volume = pool.create_volume("v", MiB)
    write(volume, b"keep")
    path = volume.path
    pool.destroy(delete_volumes=False)
    assert pools.pools() == []
    with open(path, "rb") as f:
        assert f.read(4) == b"keep"
    if pool.type == "dir":
        os.unlink(path)
        os.rmdir(pool.config.path)
    else:
        pool.backend.engine.run("zfs", ["destroy", "-r", pool.config.dataset], "destroy",
                                pool.config.dataset, busy_wait=3.0)


# -- several disks at once (the helpers of clone_domain, snapshot_disks, rollback_disks) ------

def test_snapshot_rollback_and_clone_several_disks(pool, users):
    disks = [pool.create_volume("root", 2 * MiB), pool.create_volume("data", MiB)]
    for disk in disks:
        write(disk, pattern(disk.name))
    taken = snapshot_disks(pool.pools, [disks[0].path, "p/data"], "golden")
    assert [s.key for s in taken] == ["p/root@golden", "p/data@golden"]
    for disk in disks:
        write(disk, pattern("damaged"))
    rollback_disks(pool.pools, disks, "golden")
    assert [read(d, 64 * 1024) for d in disks] == [pattern("root"), pattern("data")]
    clones = clone_disks(pool.pools, [d.path for d in disks], "golden", "web1")
    assert [c.key for c in clones] == ["p/web1-root", "p/web1-data"]
    assert [c.origin for c in clones] == ["p/root@golden", "p/data@golden"]
    assert [read(c, 64 * 1024) for c in clones] == [pattern("root"), pattern("data")]
    named = clone_disks(pool.pools, ["p/root", "p/data"], "golden", None, names=["r2", "d2"])
    assert [c.key for c in named] == ["p/r2", "p/d2"]
    with pytest.raises(ConfigError, match="1 names for 2 disks"):
        clone_disks(pool.pools, disks, "golden", None, names=["x"])


def test_several_disks_all_or_nothing(pool, users, tmp_path):
    root, data = pool.create_volume("root", MiB), pool.create_volume("data", MiB)
    data.snapshot("golden")  # taken on one disk only: snapshotting both must fail on the second
    with pytest.raises(StorageExistsError, match="p/data@golden: exists already"):
        snapshot_disks(pool.pools, [root, data], "golden")
    assert root.snapshots() == []  # the first disk's snapshot was taken back
    snapshot_disks(pool.pools, [root], "golden")
    write(root, b"new!")
    write(data, b"new!")
    use(users, data, "web")
    with pytest.raises(StorageBusyError, match="rollback p/data: in use by running domain 'web'"):
        rollback_disks(pool.pools, [root, data], "golden")
    assert read(root, 4) == b"new!"  # checked before anything was rolled back
    pool.create_volume("web1-data", MiB)
    with pytest.raises(StorageExistsError, match="p/web1-data exists already"):
        clone_disks(pool.pools, [root, data], "golden", "web1")
    assert sorted(v.name for v in pool.volumes()) == ["data", "root", "web1-data"]
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a volume of any storage pool"):
        clone_disks(pool.pools, [str(plain)], "golden", "web1")

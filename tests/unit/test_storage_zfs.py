"""xvm.storage ZFS pools on a real zfs-fuse zpool: the layout (a dataset per volume, ZFS
snapshots and clones), errors that name the dataset and the operation, and the daemon stopped
before and in the middle of an operation (stopped with SIGTERM and started again by the test)."""
import itertools
import os

import cffi
import pytest

from xvm.errors import HostError, StateError
from xvm.storage import (Pool, Pools, StorageBusyError, StorageExistsError, StorageHostError,
                         StorageNotFoundError, ZfsDaemonError, resolve_volume, zfsfuse)
from xvm.storage.backend import lzc, zfs
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
def running(zpool):
    """The daemon runs when the test starts and again when it ends (tests here stop it)."""
    yield
    if zfsfuse.daemon_pid() is None:
        zfsfuse.restart()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "domains.db") as s:
        yield s


@pytest.fixture
def users():
    return {}


@pytest.fixture
def pools(store, users):
    def in_use(path):
        hook = users.get("hook")
        if hook is not None:
            hook()
        return users.get(os.path.realpath(path))
    return Pools(store, in_use=in_use)


@pytest.fixture
def pool(pools, zpool, running, users):
    made = pools.create_pool(Pool("z", type="zfs", dataset=f"{zpool.name}/z{next(_counter)}"))
    yield made
    users.clear()
    made.destroy()


def zfs_names(pool, *types):
    out = pool.backend.engine.run("zfs", ["list", "-H", "-o", "name", "-t", ",".join(types), "-r",
                                          pool.config.dataset], "list", pool.config.dataset)
    return sorted(out.split())


def write(path, data):
    with open(path, "r+b") as f:
        f.write(data)


def read(path, length):
    with open(path, "rb") as f:
        return f.read(length)


def test_here_the_backend_is_zfs_commands_with_file_volumes(pool):
    assert not os.path.exists("/dev/zfs")  # zfs-fuse: no kernel module, no zvols
    assert lzc.load() is None
    assert pool.backend.engine.name == "zfs(8)" and pool.backend.zvols is False
    assert pool.backend.description.endswith("through zfs(8), volumes are files (vol.img) in datasets")


def test_the_libzfs_core_declarations_parse():
    ffi = cffi.FFI()
    ffi.cdef(lzc.CDEF)
    assert ffi.sizeof("enum lzc_dataset_type") == 4


def test_a_volume_is_a_file_in_its_own_dataset_and_a_clone_is_a_zfs_clone(pool):
    volume = pool.create_volume("v", 16 * MiB)
    root = pool.config.dataset
    mountpoint = pool.backend.engine.get(f"{root}/v", "mountpoint")[0]
    assert volume.path == os.path.join(mountpoint, "vol.img")
    volume.snapshot("s")
    clone = volume.clone("s", "c")
    assert zfs_names(pool, "filesystem") == [root, f"{root}/c", f"{root}/v"]
    assert zfs_names(pool, "snapshot") == [f"{root}/v@s"]
    assert pool.backend.engine.get(f"{root}/c", "origin") == [f"{root}/v@s"]
    assert clone.method == "zfs clone"
    assert volume.allocation < MiB  # sparse


def test_an_existing_dataset_is_kept_when_the_pool_is_destroyed(pools, zpool, running):
    dataset = f"{zpool.name}/kept{next(_counter)}"
    zfsfuse.run("zfs", "create", dataset)
    pool = pools.create_pool(Pool("z", type="zfs", dataset=dataset))
    pool.create_volume("v", MiB)
    pool.destroy()
    assert pool.backend.engine.exists(dataset)
    assert not pool.backend.engine.exists(f"{dataset}/v")
    pool.backend.engine.destroy(dataset)


def test_zfs_errors_name_the_dataset_and_what_happened(pool, monkeypatch):
    engine, root = pool.backend.engine, pool.config.dataset
    with pytest.raises(StorageExistsError, match=f"zfs create {root}: exists already"):
        engine.create(root)
    with pytest.raises(StorageNotFoundError, match=f"zfs rollback {root}@nope: no such snapshot"):
        engine.rollback_to(root, f"{root}@nope")
    with pytest.raises(StorageNotFoundError, match=f"zfs create {root}/a/b: parent dataset does not"):
        engine.create(f"{root}/a/b")
    with pytest.raises(StorageNotFoundError, match="zfs create nosuchzpool/x: pool missing"):
        engine.create("nosuchzpool/x")
    volume = pool.create_volume("v", MiB)
    volume.snapshot("s")
    volume.clone("s", "c")
    with pytest.raises(StorageBusyError, match=f"zfs destroy {root}/v@s: clones depend on it") as e:
        engine.destroy(f"{root}/v@s")
    assert e.value.state == "has clones" and e.value.target == f"{root}/v@s"
    volume.snapshot("t")
    with pytest.raises(StorageBusyError, match="more recent snapshots exist") as e:
        engine.rollback_to(f"{root}/v", f"{root}/v@s")
    assert e.value.state == "later snapshots"
    monkeypatch.setattr(zfs, "BUSY_WAIT", 0.2)
    with open(pool.lookup_volume("c").path, "rb"):
        with pytest.raises(StorageBusyError, match=f"zfs destroy {root}/c: busy") as e:
            engine.destroy(f"{root}/c")
    assert e.value.state == "busy"


def test_daemon_messages_become_daemon_errors():
    e = zfs.command_error("zfs", "snapshot", "tank/xvm/v@s", "connect: Connection refused\nPlease "
                          "make sure that the zfs-fuse daemon is running.\ninternal error: failed to "
                          "initialize ZFS library\n", 1)
    assert isinstance(e, ZfsDaemonError) and isinstance(e, HostError)
    assert str(e).startswith("zfs snapshot tank/xvm/v@s: the ZFS daemon is not running")
    e = zfs.command_error("zfs", "create", "tank/x", "something new went wrong\n", 2)
    assert str(e) == "zfs create tank/x failed (exit status 2): something new went wrong"


def test_the_daemon_stopped_before_an_operation(pool, pools, zpool):
    volume = pool.create_volume("v", 4 * MiB)
    write(volume.path, b"golden")
    volume.snapshot("s1")
    zfsfuse.stop()
    with pytest.raises(ZfsDaemonError, match=f"zfs snapshot {pool.config.dataset}/v@s2: the ZFS "
                                             "daemon is not running") as e:
        volume.snapshot("s2")
    assert e.value.operation == "snapshot" and e.value.target == f"{pool.config.dataset}/v@s2"
    with pytest.raises(ZfsDaemonError, match="not running"):
        pools.create_pool(Pool("other", type="zfs", dataset=f"{zpool.name}/other"))
    with pytest.raises(ZfsDaemonError):
        pool.create_volume("w", MiB)
    assert [p.name for p in pools.pools()] == ["z"]
    assert [v.name for v in pool.volumes()] == ["v"]
    assert [s.name for s in volume.snapshots()] == ["s1"]
    zfsfuse.start()  # back, its datasets not mounted: the path lookup mounts them
    assert read(resolve_volume(pools.store, "z/v"), 6) == b"golden"
    volume.snapshot("s2")
    assert zfs_names(pool, "snapshot") == [f"{pool.config.dataset}/v@{s}" for s in ("s1", "s2")]


def test_the_daemon_stopped_in_the_middle_of_an_operation(pool, users):
    volume = pool.create_volume("v", 4 * MiB)
    write(volume.path, b"golden")
    volume.snapshot("s")
    write(volume.path, b"change")
    users["hook"] = zfsfuse.stop  # asked whether the volume is in use, after the other checks
    with pytest.raises(ZfsDaemonError, match=f"zfs rollback {pool.config.dataset}/v@s: the ZFS "
                                             "daemon is not running"):
        volume.rollback("s")
    zfsfuse.restart()
    with pytest.raises(ZfsDaemonError, match="not running"):
        volume.delete()
    del users["hook"]
    zfsfuse.restart()
    assert [v.name for v in pool.volumes()] == ["v"]
    assert [s.name for s in volume.snapshots()] == ["s"]
    assert read(volume.path, 6) == b"change"  # neither rolled back nor deleted
    volume.rollback("s")
    assert read(volume.path, 6) == b"golden"
    volume.delete()
    assert pool.volumes() == [] and zfs_names(pool, "snapshot") == []


def test_refusals_are_state_errors(pool, users):
    volume = pool.create_volume("v", MiB)
    volume.snapshot("s")
    users[os.path.realpath(volume.path)] = "web"
    for action in (volume.delete, lambda: volume.rollback("s")):
        with pytest.raises(StorageBusyError, match="in use by running domain 'web'") as e:
            action()
        assert isinstance(e.value, StateError)
    assert zfs_names(pool, "snapshot") == [f"{pool.config.dataset}/v@s"]


class FakeLzc:
    """Stands in for the libzfs_core binding (absent here): every call fails with one errno."""

    def __init__(self, errno):
        self.errno = errno

    def __getattr__(self, call):
        def fail(*args, **kwargs):
            raise lzc.LzcError(f"lzc_{call}", self.errno)
        return fail


@pytest.mark.parametrize("errno, cls, meaning, state", [
    (17, StorageExistsError, "exists already", None),
    (2, StorageNotFoundError, "no such snapshot", None),
    (16, StorageBusyError, "busy", "busy"),
    (18, StorageBusyError, "more recent snapshots exist", "later snapshots"),
    (28, StorageHostError, "out of space", None),
    (5, StorageHostError, "Input/output error", None),
])
def test_libzfs_core_errnos_name_the_dataset_and_what_happened(errno, cls, meaning, state):
    engine = zfs.Libzfs(FakeLzc(errno), zfs.ZfsCommands())
    with pytest.raises(cls, match=f"lzc_rollback_to rollback tank/v@s: {meaning}") as e:
        engine.rollback_to("tank/v", "tank/v@s")
    assert (e.value.target, e.value.operation) == ("tank/v@s", "rollback")
    assert getattr(e.value, "state", None) == state
    assert engine.zpool_exists.__self__ is engine.commands  # listing stays with zfs(8)

"""xvm.storage: the Pool config (plain data, checked on construction) and the error hierarchy."""
import pathlib
import pickle

import pytest

from xvm.errors import ConfigError, HostError, NotFoundError, StateError, XvmError
from xvm.storage import (Pool, StorageBusyError, StorageError, StorageExistsError, StorageHostError,
                         StorageNotFoundError, ZfsDaemonError)


def test_a_dir_pool():
    pool = Pool("fast", type="dir", path=pathlib.Path("/srv/xvm//images/"))
    assert pool.path == "/srv/xvm/images" and pool.dataset is None
    assert pool.to_dict() == {"name": "fast", "type": "dir", "path": "/srv/xvm/images"}
    assert Pool.from_dict(pool.to_dict()) == pool
    assert Pool("d", path="/x").type == "dir"


def test_a_zfs_pool():
    pool = Pool("tank", type="zfs", dataset="tank/xvm/vols")
    assert pool.to_dict() == {"name": "tank", "type": "zfs", "dataset": "tank/xvm/vols"}
    assert Pool.from_dict(pool.to_dict()) == pool
    assert hash(pool) == hash(Pool.from_dict(pool.to_dict()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name=""), "pool name '' is invalid"),
    (dict(name="a/b", path="/x"), "pool name 'a/b' is invalid"),
    (dict(name="a+b", path="/x"), "pool name 'a\\+b' is invalid"),
    (dict(name="p", type="lvm", path="/x"), "type 'lvm' is not one of dir, zfs"),
    (dict(name="p"), "a dir pool needs path=DIRECTORY"),
    (dict(name="p", path="relative/dir"), "must be an absolute path"),
    (dict(name="p", path=3), "path must be a str or os.PathLike"),
    (dict(name="p", path="/x", dataset="tank/x"), "a dir pool has a path, not a dataset"),
    (dict(name="p", type="zfs"), "a zfs pool needs dataset="),
    (dict(name="p", type="zfs", dataset="tank/x", path="/x"), "has a dataset, not a path"),
    (dict(name="p", type="zfs", dataset="tank/x@snap"), "is not a ZFS dataset name"),
    (dict(name="p", type="zfs", dataset="tank//x"), "is not a ZFS dataset name"),
    (dict(name="p", type="zfs", dataset="/tank"), "is not a ZFS dataset name"),
])
def test_bad_pool_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Pool(**kwargs)


def test_from_dict_checks_its_input():
    with pytest.raises(ConfigError, match="unknown keys: size"):
        Pool.from_dict({"name": "p", "path": "/x", "size": 3})
    with pytest.raises(ConfigError, match="has no name"):
        Pool.from_dict({"path": "/x"})
    with pytest.raises(ConfigError, match="must be a dict"):
        Pool.from_dict(["p"])


def test_pool_is_frozen():
    with pytest.raises(AttributeError):
        Pool("p", path="/x").path = "/y"


def test_the_error_hierarchy():
    assert issubclass(StorageNotFoundError, NotFoundError)
    assert issubclass(StorageNotFoundError, StorageError)
    assert issubclass(StorageExistsError, ConfigError)
    assert issubclass(StorageBusyError, StateError)
    assert issubclass(StorageHostError, HostError) and issubclass(ZfsDaemonError, StorageHostError)
    assert all(issubclass(cls, XvmError) for cls in (StorageError, ZfsDaemonError))


@pytest.mark.parametrize("error", [
    StorageNotFoundError("no volume p/v", target="p/v", operation="lookup volume"),
    StorageExistsError("exists", target="p/v", operation="create volume"),
    StorageBusyError("busy", target="p/v", operation="delete", state="in use"),
    StorageHostError("no space", target="/x", operation="clone", errno=28),
    ZfsDaemonError("daemon down", target="tank/v@s", operation="snapshot", errno=111),
])
def test_errors_keep_what_and_why_through_pickle(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert (copy.target, copy.operation) == (error.target, error.operation)
    for attribute in ("state", "errno", "strerror"):
        assert getattr(copy, attribute, None) == getattr(error, attribute, None)

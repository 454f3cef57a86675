"""A storage pool's configuration: plain, frozen, checked on construction, no I/O."""
import os
import re
from dataclasses import dataclass

from ..errors import ConfigError

POOL_TYPES = ("dir", "zfs")
VOLUME_FORMATS = ("raw",)
# Pool, volume and snapshot names: what both a file name and a ZFS dataset component accept.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A ZFS dataset name (zfs(8) "Component names"): zpool/child/..., no snapshot part.
DATASET_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
SECTOR_SIZE = 512


def check_name(value, what):
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is invalid: use 1-64 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return value


def check_size(value, what="volume size"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an int number of bytes, not {value!r}")
    if value <= 0 or value % SECTOR_SIZE:
        raise ConfigError(f"{what} {value} must be a positive multiple of {SECTOR_SIZE} bytes")
    return value


@dataclass(frozen=True)
class Pool:
    """``Pool(name, type="dir", path=DIR)`` or ``Pool(name, type="zfs", dataset="tank/xvm")``.

    A directory pool keeps each volume as a raw sparse file in ``path``; a ZFS pool keeps each
    volume in its own dataset under ``dataset`` (a zvol where the host has zvols, else a file
    ``vol.img`` in a filesystem dataset). Either is created when the pool is, if missing.
    """

    name: str
    type: str = "dir"
    path: str | None = None
    dataset: str | None = None

    def __post_init__(self):
        check_name(self.name, "pool name")
        if self.type not in POOL_TYPES:
            raise ConfigError(f"pool {self.name!r}: type {self.type!r} is not one of "
                              f"{', '.join(POOL_TYPES)}")
        if self.type == "dir":
            if self.dataset is not None:
                raise ConfigError(f"pool {self.name!r}: a dir pool has a path, not a dataset")
            if self.path is None:
                raise ConfigError(f"pool {self.name!r}: a dir pool needs path=DIRECTORY")
            try:
                path = os.fspath(self.path)
            except TypeError:
                raise ConfigError(f"pool {self.name!r}: path must be a str or os.PathLike, "
                                  f"not {type(self.path).__name__}") from None
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ConfigError(f"pool {self.name!r}: path {path!r} must be an absolute path")
            object.__setattr__(self, "path", os.path.normpath(path))
        else:
            if self.path is not None:
                raise ConfigError(f"pool {self.name!r}: a zfs pool has a dataset, not a path")
            if not isinstance(self.dataset, str):
                raise ConfigError(f"pool {self.name!r}: a zfs pool needs dataset='ZPOOL/NAME', "
                                  f"not {self.dataset!r}")
            parts = self.dataset.split("/")
            if not all(DATASET_COMPONENT.fullmatch(part) for part in parts) or len(self.dataset) > 200:
                raise ConfigError(f"pool {self.name!r}: {self.dataset!r} is not a ZFS dataset name "
                                  "(ZPOOL/NAME/..., letters, digits, '_', '.', ':' or '-')")

    def to_dict(self):
        key = "path" if self.type == "dir" else "dataset"
        return {"name": self.name, "type": self.type, key: getattr(self, key)}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ConfigError(f"a pool config must be a dict, not {type(data).__name__}")
        unknown = set(data) - {"name", "type", "path", "dataset"}
        if unknown:
            raise ConfigError(f"pool config has unknown keys: {', '.join(sorted(unknown))}")
        if "name" not in data:
            raise ConfigError("pool config has no name")
        return cls(**data)

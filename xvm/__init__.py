"""xvm — a virtual machine monitor in Python on Linux KVM.

    import xvm
    with xvm.connect() as host:            # xvm:///session: no daemon, one VMM process per domain
        dom = host.define(xvm.DomainConfig(name="demo", memory_mib=64, kernel="guest.elf"))
        dom.start()                        # keeps running after this script ends
        dom.console.expect("login:")
"""
from .config import DomainConfig
from .console import Console
from .devices.block import Disk
from .domain import Domain, DomainState, ShutdownTimeout
from .errors import (
    BootError,
    ConfigError,
    ConsoleTimeout,
    GuestError,
    HostError,
    KvmError,
    NotFoundError,
    StateError,
    XvmError,
)
from .host import Capabilities, Host, connect
from .migration.snapshot import SnapshotError, snapshot_config
from .migration.stream import MigrationError, MigrationStats
from .net import HostNetwork, Network, Nic
from .sched import Sched, VcpuInfo
from .storage.config import Pool

__all__ = [
    "BootError", "Capabilities", "ConfigError", "Console", "ConsoleTimeout", "Disk", "Domain", "DomainConfig",
    "DomainState", "GuestError", "Host", "HostError", "HostNetwork", "KvmError", "MigrationError", "MigrationStats", "Network", "Nic", "NotFoundError",
    "Pool", "Sched", "ShutdownTimeout", "SnapshotError", "StateError", "VcpuInfo", "XvmError", "connect",
    "snapshot_config",
]
